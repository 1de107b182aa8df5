//! The files a run writes (`--json FILE`, `--svg FILE`). Each is opened
//! for writing before the run, so a path that cannot be written (its
//! directory missing or not writable, or the path a directory) ends the
//! bench at once, in one line, before any router or peer starts. The files
//! are written after the table is printed, so a write that fails then
//! still leaves the table on stdout, and the error follows on stderr.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::bail;

/// One output file, checked writable. A file this run created and never
/// wrote (the run failed or was interrupted) is removed on drop; a file
/// that was there before is left untouched until it is written.
pub struct Output {
    /// The option that named it: `--json` or `--svg`.
    flag: &'static str,
    path: PathBuf,
    created: bool,
    written: bool,
}

impl Output {
    /// Opens `path` for writing (creating it if need be, never truncating
    /// what is there) and lets it go again: the check is the open itself.
    pub fn open(flag: &'static str, path: &Path) -> anyhow::Result<Output> {
        if path.is_dir() {
            bail!("{flag} {}: is a directory, not a file", path.display());
        }
        let fail = |err: std::io::Error| {
            anyhow::anyhow!(
                "cannot write {flag} {}: {}",
                path.display(),
                why(path, &err)
            )
        };
        let created = match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(_) => true,
            Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                OpenOptions::new().write(true).open(path).map_err(fail)?;
                false
            }
            Err(err) => return Err(fail(err)),
        };
        Ok(Output {
            flag,
            path: path.to_owned(),
            created,
            written: false,
        })
    }

    /// Writes `bytes` to the file (replacing what was there) and gives its
    /// absolute path.
    pub fn write(&mut self, bytes: &[u8]) -> anyhow::Result<PathBuf> {
        let path = &self.path;
        if let Err(err) = std::fs::write(path, bytes) {
            bail!(
                "cannot write {} {}: {}",
                self.flag,
                path.display(),
                why(path, &err)
            );
        }
        self.written = true;
        Ok(std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.clone()))
    }

    /// Whether `self` and `other` are one file.
    fn same_file(&self, other: &Output) -> bool {
        match (
            std::fs::canonicalize(&self.path),
            std::fs::canonicalize(&other.path),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.created && !self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why `path` cannot be written, in words.
fn why(path: &Path, err: &std::io::Error) -> String {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
        _ => ".".to_owned(),
    };
    match err.kind() {
        ErrorKind::NotFound if !Path::new(&dir).exists() => {
            format!("its directory {dir} does not exist")
        }
        ErrorKind::NotADirectory => format!("{dir} is not a directory"),
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            format!("{dir} is not writable ({err})")
        }
        ErrorKind::IsADirectory => "is a directory, not a file".to_owned(),
        _ => err.to_string(),
    }
}

/// The run's output files, those asked for.
pub struct Outputs {
    pub json: Option<Output>,
    pub svg: Option<Output>,
}

impl Outputs {
    /// Opens both (see [`Output::open`]); one that cannot be written, or
    /// both naming one file, is an error.
    pub fn open(json: Option<&Path>, svg: Option<&Path>) -> anyhow::Result<Outputs> {
        let json = json.map(|p| Output::open("--json", p)).transpose()?;
        let svg = svg.map(|p| Output::open("--svg", p)).transpose()?;
        if let (Some(j), Some(s)) = (&json, &svg) {
            if j.same_file(s) {
                bail!(
                    "--json {} and --svg {} are one file",
                    j.path.display(),
                    s.path.display()
                );
            }
        }
        Ok(Outputs { json, svg })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_refused_and_nothing_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("no-such-dir").join("out.svg");
        let err = Output::open("--svg", &path).err().unwrap().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Output::open("--json", tmp.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn a_file_never_written_is_removed_and_one_there_before_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("fresh.json");
        drop(Output::open("--json", &fresh).unwrap());
        assert!(!fresh.exists());

        let old = tmp.path().join("old.json");
        std::fs::write(&old, "before").unwrap();
        drop(Output::open("--json", &old).unwrap());
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "before");

        let mut out = Output::open("--json", &fresh).unwrap();
        let abs = out.write(b"{}\n").unwrap();
        drop(out);
        assert!(abs.is_absolute(), "{}", abs.display());
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "{}\n");
    }

    #[test]
    fn one_file_for_both_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out");
        let err = Outputs::open(Some(&path), Some(&path)).err().unwrap();
        assert!(err.to_string().contains("one file"), "{err}");
        assert!(!path.exists());
    }
}
