//! The `peer` binary as a person runs it: on a real pty (stdin, stdout and
//! stderr all the terminal), its screen read back as the person sees it.
//! No log line may ever land on that screen: on a terminal, logs go to
//! `peer.log` in the data directory.

mod common;

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Proc;

/// What a log line on the screen would contain (a tracing level, or a
/// module path).
const LOG_MARKS: [&str; 5] = ["WARN", "INFO", "ERROR", "DEBUG", "parley::"];

/// A `peer` process on a pty, and everything it has written to the screen,
/// as bytes and as a terminal emulator (vt100) shows them.
struct Screen {
    child: Child,
    master: std::fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
    term: Arc<Mutex<vt100::Parser<Rung>>>,
}

/// What the terminal was asked to do besides drawing: the bell, the title.
#[derive(Default)]
struct Rung {
    bells: usize,
    title: String,
}

impl vt100::Callbacks for Rung {
    fn audible_bell(&mut self, _: &mut vt100::Screen) {
        self.bells += 1;
    }

    fn set_window_title(&mut self, _: &mut vt100::Screen, title: &[u8]) {
        self.title = String::from_utf8_lossy(title).into_owned();
    }
}

impl Screen {
    /// A peer on a pty, without colour (`NO_COLOR`): the screen reads as
    /// plain text.
    fn peer(args: &[&str]) -> Screen {
        Screen::peer_in(args, false)
    }

    /// A peer on a pty in line mode (`--plain`), in colour when `colour`
    /// is set.
    fn peer_in(args: &[&str], colour: bool) -> Screen {
        let mut args = args.to_vec();
        args.push("--plain");
        Screen::spawn(&args, colour)
    }

    /// A peer on a pty as a person starts it: the full screen, no colour.
    fn full(args: &[&str]) -> Screen {
        Screen::spawn(args, false)
    }

    fn spawn(args: &[&str], colour: bool) -> Screen {
        let winsize = nix::pty::Winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(&winsize, None).expect("a pty");
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
        cmd.args(args)
            .stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave))
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env("TERM", "xterm");
        if !colour {
            cmd.env("NO_COLOR", "1");
        }
        // Its own session, as a login shell would give it: keys typed here
        // never signal the test.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                // The pty is its controlling terminal, so a resize signals
                // it (SIGWINCH), as on a real terminal.
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start peer");
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let term = Arc::new(Mutex::new(vt100::Parser::new_with_callbacks(
            NonZeroU16::new(winsize.ws_row).expect("rows"),
            NonZeroU16::new(winsize.ws_col).expect("cols"),
            0,
            Rung::default(),
        )));
        let mut reader = master.try_clone().unwrap();
        let (sink, emulator) = (seen.clone(), term.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the peer (the last holder of the slave) exits.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
                emulator.lock().unwrap().process(&buf[..n]);
            }
        });
        Screen {
            child,
            master,
            seen,
            term,
        }
    }

    /// The screen's rows as the emulator shows them now.
    fn rows(&self) -> Vec<String> {
        let term = self.term.lock().unwrap();
        let (_, cols) = term.screen().size();
        term.screen().rows(0, cols.get()).collect()
    }

    /// Waits (at most 10 s) until some row of the screen satisfies `ok`;
    /// that row.
    async fn row_where(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(row) = self.rows().into_iter().find(|r| ok(r)) {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "no row with {what} within 10 s; the screen:\n{}",
                self.rows().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most 10 s) until the screen shows `what` on some row.
    async fn shows(&self, what: &str) -> String {
        self.row_where(&format!("{what:?}"), |r| r.contains(what))
            .await
    }

    /// The status bar: the row before the input line.
    fn status_bar(&self) -> String {
        let rows = self.rows();
        rows[rows.len() - 2].clone()
    }

    /// Waits (at most 10 s) until the status bar shows `what`.
    async fn status_shows(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.status_bar().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in the status bar within 10 s; the screen:\n{}",
                self.rows().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many rows show `what` now.
    fn count(&self, what: &str) -> usize {
        self.rows().iter().filter(|r| r.contains(what)).count()
    }

    /// Resizes the terminal, as a person dragging its corner does.
    fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        self.term.lock().unwrap().screen_mut().set_size(
            NonZeroU16::new(rows).expect("rows"),
            NonZeroU16::new(cols).expect("cols"),
        );
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: a valid winsize for the pty's own fd.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "resize the pty");
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits (at most `within`) until the screen shows `what`.
    async fn wait_for(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} on the screen within {within:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `keys` one at a time, as a hand does ([`Screen::burst`]
    /// writes them all at once).
    async fn type_keys(&mut self, keys: &str) {
        let mut buf = [0u8; 4];
        for c in keys.chars() {
            self.master
                .write_all(c.encode_utf8(&mut buf).as_bytes())
                .unwrap();
            self.master.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes `bytes` in one write, as a paste without bracketed paste, an
    /// input method or a slow ssh link delivers them (rustyline#976).
    fn burst(&mut self, bytes: &str) {
        self.master.write_all(bytes.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// The screen after the last `mark` on it.
    fn after(&self, mark: &str) -> String {
        let text = self.text();
        match text.rfind(mark) {
            Some(i) => text[i + mark.len()..].to_owned(),
            None => String::new(),
        }
    }

    /// Waits (at most 10 s) until the screen after the last `mark` shows
    /// `what`.
    async fn wait_after(&self, mark: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.after(mark).contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} after {mark:?} within 10 s:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most 10 s) for the peer to exit; its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "peer still running after 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn assert_no_log_lines(&self) {
        let text = self.text();
        for mark in LOG_MARKS {
            assert!(
                !text.contains(mark),
                "a log line ({mark}) on the screen:\n{text}"
            );
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("peer.log")).unwrap_or_default()
}

/// Waits (at most `within`) until the log file holds `what`.
async fn log_holds(dir: &Path, what: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = read_log(dir);
        if log.contains(what) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} in peer.log within {within:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn logs_go_to_the_data_directory_and_the_router_is_one_calm_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("alice");
    let (router, addr) = Proc::router(10).await;
    let d = dir.to_str().unwrap();
    let mut screen = Screen::peer(&[
        "--nick",
        "alice",
        "--router",
        &addr,
        "--data-dir",
        d,
        "--join",
        "#rust",
    ]);
    screen
        .wait_for("-- joined #rust", Duration::from_secs(10))
        .await;
    // Logging went on meanwhile (the router's key pinned on first contact),
    // into the file.
    log_holds(&dir, "pinned the router's key", Duration::from_secs(5)).await;

    // Half a line typed, then the router dies: one line says so, the
    // heartbeats failing every few seconds go to the log.
    screen.type_keys("half a li").await;
    router.kill9().await;
    screen
        .wait_for("-- lost the router, retrying", Duration::from_secs(10))
        .await;
    let log = log_holds(&dir, "heartbeat failed", Duration::from_secs(15)).await;
    assert!(log.contains("WARN") && log.contains("parley::"), "{log}");
    screen.assert_no_log_lines();
    assert_eq!(
        screen.text().matches("lost the router").count(),
        1,
        "said once per outage:\n{}",
        screen.text()
    );

    // Back on its port: one line again.
    let (router, _) = Proc::router_on(&addr, 10).await;
    screen
        .wait_for("-- router back", Duration::from_secs(15))
        .await;
    screen.type_keys("ne\r").await;
    screen
        .wait_for("<alice> half a line", Duration::from_secs(10))
        .await;
    screen.assert_no_log_lines();

    // A parting message is taken, and no prompt is drawn after /quit.
    screen.type_keys("/quit bye all\r").await;
    assert_eq!(screen.exit_code().await, Some(0));
    let text = screen.text();
    screen.assert_no_log_lines();
    assert!(!text.contains("too many arguments"), "{text}");
    let after = &text[text.rfind("/quit bye all").unwrap() + "/quit bye all".len()..];
    assert!(
        !after.contains("> "),
        "a prompt after /quit: {after:?}\n{text}"
    );
    assert_eq!(text.matches("router back").count(), 1, "{text}");
    router.terminate().await;
}

#[tokio::test]
async fn log_stderr_keeps_logs_on_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bob");
    let (router, addr) = Proc::router(10).await;
    // No --plain: logs on the terminal mean lines, never the full screen
    // they would write over.
    let mut screen = Screen::full(&[
        "--nick",
        "bob",
        "--router",
        &addr,
        "--data-dir",
        dir.to_str().unwrap(),
        "--log-stderr",
    ]);
    screen
        .wait_for("pinned the router's key", Duration::from_secs(10))
        .await;
    assert!(screen.text().contains("INFO"), "{}", screen.text());
    screen
        .wait_for("-- you are bob", Duration::from_secs(10))
        .await;
    assert!(!screen.term.lock().unwrap().screen().alternate_screen());
    screen.type_keys("/quit\r").await;
    assert_eq!(screen.exit_code().await, Some(0));
    assert!(
        !dir.join("peer.log").exists(),
        "no log file with --log-stderr"
    );
    router.terminate().await;
}

#[tokio::test]
async fn a_failed_start_on_a_terminal_is_one_line_and_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nobody-home");
    let mut screen = Screen::peer(&[
        "--nick",
        "carol",
        "--router",
        "127.0.0.1:1",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(screen.exit_code().await, Some(1));
    // The reader thread may still be taking the last bytes.
    screen
        .wait_for("router --listen", Duration::from_secs(5))
        .await;
    let text = screen.text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{text:?}");
    assert!(
        lines[0].starts_with("peer: no router at 127.0.0.1:1"),
        "{text:?}"
    );
    assert!(
        !dir.exists(),
        "a failed start left {} behind",
        dir.display()
    );
}

#[tokio::test]
async fn bursts_prompts_switching_and_tab_work_as_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &["--join", "#a"]).await;
    bob.event("joined").await;
    let dir = tmp.path().join("alice");
    let mut screen = Screen::peer(&[
        "--nick",
        "alice",
        "--router",
        &addr,
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    screen
        .wait_for("/help lists commands", Duration::from_secs(10))
        .await;
    screen.wait_after("/help lists commands", "> ").await;

    // A whole line and Enter in one write: acted on with no further key.
    screen.burst("/join #a\r");
    screen
        .wait_for("-- joined #a", Duration::from_secs(10))
        .await;
    screen.wait_after("-- joined #a", "[#a] ").await;
    screen.burst("/j #b\r");
    screen
        .wait_for("-- joined #b", Duration::from_secs(10))
        .await;
    screen.wait_after("-- joined #b", "[#b] ").await;
    screen.burst("said in one burst\r");
    screen
        .wait_for("#b <alice> said in one burst", Duration::from_secs(10))
        .await;
    // Several lines in one write: every one is taken, in order.
    screen.burst("first of three\rsecond of three\r/j #a\r");
    screen
        .wait_for("#b <alice> first of three", Duration::from_secs(10))
        .await;
    screen
        .wait_for("#b <alice> second of three", Duration::from_secs(10))
        .await;
    screen
        .wait_after("#b <alice> second of three", "-- joined #a")
        .await;
    screen.burst("/switch #b\r");
    screen
        .wait_for("-- now talking in #b", Duration::from_secs(10))
        .await;

    // A message elsewhere is marked with its room, and counted.
    bob.send("over in a").await;
    bob.event("sent").await;
    screen
        .wait_for("#a <bob> over in a", Duration::from_secs(10))
        .await;
    screen.burst("/switch\r");
    screen
        .wait_for("1 #a (1 unread)", Duration::from_secs(10))
        .await;
    screen
        .wait_after("1 #a (1 unread)", "[#b] (1 unread) ")
        .await;
    screen.burst("/switch 1\r");
    screen
        .wait_for("-- now talking in #a", Duration::from_secs(10))
        .await;
    screen.wait_after("-- now talking in #a", "[#a] ").await;
    assert!(
        !screen.after("-- now talking in #a").contains("unread"),
        "switching clears the count:\n{}",
        screen.text()
    );

    // Tab: a nick of the room, then a command.
    screen.type_keys("bo\t").await;
    screen.wait_after("-- now talking in #a", "bob: ").await;
    screen.type_keys("hi\r").await;
    let m = bob.event("message").await;
    assert_eq!(m["body"], "bob: hi");
    let mark = screen.text().len();
    screen.type_keys("/jo\t").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !screen.text()[mark..].contains("/join ") {
        assert!(
            Instant::now() < deadline,
            "no /join completed:\n{}",
            screen.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    screen.type_keys("#c\r").await;
    screen
        .wait_for("-- joined #c", Duration::from_secs(10))
        .await;
    screen.wait_after("-- joined #c", "[#c] ").await;

    screen.burst("/quit\r");
    assert_eq!(screen.exit_code().await, Some(0));
    screen.assert_no_log_lines();
    bob.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn joining_shows_what_was_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &["--join", "#m"]).await;
    bob.event("joined").await;
    for m in ["m1", "m2", "m3"] {
        bob.send(m).await;
        bob.event("sent").await;
    }
    let dir = tmp.path().join("alice");
    let mut screen = Screen::peer(&[
        "--nick",
        "alice",
        "--router",
        &addr,
        "--data-dir",
        dir.to_str().unwrap(),
        "--join",
        "#m",
    ]);
    screen
        .wait_for("new before you came", Duration::from_secs(10))
        .await;
    screen
        .wait_after("new before you came", "#m <bob> m3")
        .await;
    screen.wait_after("#m <bob> m3", "[#m] ").await;

    screen.burst("/part #m\r");
    screen
        .wait_for("-- you left #m", Duration::from_secs(10))
        .await;
    for m in ["later1", "later2"] {
        bob.send(m).await;
        bob.event("sent").await;
    }
    screen.burst("/join #m\r");
    screen
        .wait_for("-- 2 new since you left", Duration::from_secs(10))
        .await;
    screen
        .wait_after("-- 2 new since you left", "#m <bob> later2")
        .await;
    // Bob logs out: a quit, with his parting message, as IRC says it.
    bob.send("/quit off to bed").await;
    bob.quit().await;
    screen
        .wait_for("-- bob has quit (#m): off to bed", Duration::from_secs(10))
        .await;
    screen.burst("/quit\r");
    assert_eq!(screen.exit_code().await, Some(0));
    router.terminate().await;
}

#[tokio::test]
async fn colours_mentions_topics_and_a_kept_line_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &["--join", "#c"]).await;
    bob.event("joined").await;
    bob.send("/topic colour me in").await;
    bob.event("sent").await;
    let dir = tmp.path().join("alice");
    let mut screen = Screen::peer_in(
        &[
            "--nick",
            "alice",
            "--router",
            &addr,
            "--data-dir",
            dir.to_str().unwrap(),
            "--join",
            "#c",
        ],
        true,
    );
    // On joining, the topic, as IRC shows it.
    screen
        .wait_for(
            "-- topic of #c: colour me in (set by bob, ",
            Duration::from_secs(10),
        )
        .await;
    screen.wait_for("[#c] ", Duration::from_secs(10)).await;

    // bob's nick in its own colour, the same on every line; a line that
    // names alice stands out (bold, reverse), one that does not, not.
    let bob_in_colour = format!(
        "<\x1b[{}mbob\x1b[0m>",
        parley::terminal::output::nick_colour("bob")
    );
    bob.send("plain words").await;
    bob.event("sent").await;
    screen
        .wait_for(
            &format!("{bob_in_colour} plain words"),
            Duration::from_secs(10),
        )
        .await;
    bob.send("Alice: look here").await;
    bob.event("sent").await;
    screen
        .wait_for(
            &format!("{bob_in_colour} \x1b[1;7mAlice: look here\x1b[0m"),
            Duration::from_secs(10),
        )
        .await;
    bob.send("malice is no mention").await;
    bob.event("sent").await;
    screen
        .wait_for(
            &format!("{bob_in_colour} malice is no mention"),
            Duration::from_secs(10),
        )
        .await;

    // Ctrl-C on a half-typed line asks, and the line comes back whole.
    screen.type_keys("half a thou").await;
    screen.burst("\x03");
    screen
        .wait_for(parley::terminal::io::CTRL_C_AGAIN, Duration::from_secs(10))
        .await;
    screen.type_keys("ght\r").await;
    let m = bob.event("message").await;
    assert_eq!(m["body"], "half a thought");
    // On an empty line, Ctrl-C quits at once; so does a second Ctrl-C.
    screen.type_keys("another").await;
    screen.burst("\x03");
    screen
        .wait_after("half a thought", parley::terminal::io::CTRL_C_AGAIN)
        .await;
    screen.burst("\x03");
    assert_eq!(screen.exit_code().await, Some(0));
    screen.assert_no_log_lines();
    bob.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn no_colour_with_no_color() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &["--join", "#n"]).await;
    bob.event("joined").await;
    let dir = tmp.path().join("alice");
    let mut screen = Screen::peer(&[
        "--nick",
        "alice",
        "--router",
        &addr,
        "--data-dir",
        dir.to_str().unwrap(),
        "--join",
        "#n",
    ]);
    screen.wait_for("[#n] ", Duration::from_secs(10)).await;
    bob.send("alice, plain please").await;
    bob.event("sent").await;
    screen
        .wait_for("#n <bob> alice, plain please", Duration::from_secs(10))
        .await;
    screen.burst("/quit\r");
    assert_eq!(screen.exit_code().await, Some(0));
    assert!(!screen.text().contains("\x1b[1;7m"), "{:?}", screen.text());
    assert!(
        !screen.text().contains("mbob\x1b[0m"),
        "{:?}",
        screen.text()
    );
    bob.quit().await;
    router.terminate().await;
}

/// The full screen, as a person at a terminal gets it: windows, the status
/// bar and its activity, Alt-N, the nick list, one copy of your own line, a
/// new private conversation opening its window with the bell and the title,
/// a mention, a burst of input, PageUp, a resize, and the terminal given
/// back at the end.
#[tokio::test]
async fn the_full_screen_has_windows_a_status_bar_and_activity() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &["--join", "#a"]).await;
    bob.event("joined").await;
    let mut carol = Proc::peer(&addr, "carol", &tmp.path().join("carol"), &[]).await;
    let dir = tmp.path().join("alice");
    let mut screen = Screen::full(&[
        "--nick",
        "alice",
        "--router",
        &addr,
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    screen.status_shows("[alice] [1:(status)]").await;
    screen.shows("-- you are alice, listening on").await;
    assert!(screen.term.lock().unwrap().screen().alternate_screen());

    // irssi's habit: the `#` is added. The room gets window 2, with its
    // nick list.
    screen.burst("/join a\r");
    screen.status_shows("[2:#a]").await;
    screen.shows("-- joined #a").await;
    screen
        .row_where("the nick list", |r| r.trim_end().ends_with("│bob"))
        .await;
    // The title line carries the room's topic once set.
    screen.burst("/topic all about a\r");
    screen.shows("changed the topic to: all about a").await;
    screen
        .row_where("the topic in the title", |r| {
            r.starts_with(" #a: all about a")
        })
        .await;
    assert!(screen.rows()[0].starts_with(" #a: all about a"));
    assert_eq!(bob.event("message").await["kind"], "topic");
    assert!(screen.rows()[screen.rows().len() - 1].starts_with("[#a] "));

    // Your line appears once: the input line is emptied, the window holds it.
    screen.type_keys("hello from alice\r").await;
    screen.shows("<alice> hello from alice").await;
    assert_eq!(bob.event("message").await["body"], "hello from alice");
    assert_eq!(
        screen.count("hello from alice"),
        1,
        "{}",
        screen.rows().join("\n")
    );

    // A private line from someone new opens its window (3), counted in
    // Act:, with the bell and the title.
    let bells = screen.term.lock().unwrap().callbacks().bells;
    carol.send("/msg alice psst, alice").await;
    carol.event("sent").await;
    screen.status_shows("[Act: 3!]").await;
    assert!(screen.term.lock().unwrap().callbacks().bells > bells);
    assert!(
        screen
            .term
            .lock()
            .unwrap()
            .callbacks()
            .title
            .contains("carol"),
        "title: {}",
        screen.term.lock().unwrap().callbacks().title
    );
    assert_eq!(screen.count("psst"), 0, "shown in its own window only");

    // Alt-3: its window, read, so Act: empties.
    screen.burst("\x1b3");
    screen.status_shows("[3:@carol]").await;
    screen.shows("<carol> psst, alice").await;
    assert!(
        !screen.status_bar().contains("Act:"),
        "{}",
        screen.status_bar()
    );
    // A reply typed there goes to carol.
    screen.type_keys("hi carol\r").await;
    assert_eq!(carol.event("message").await["body"], "hi carol");

    // A line in #a while away from it: Act: 2; one naming alice: 2!.
    bob.send("just chatting").await;
    screen.status_shows("[Act: 2]").await;
    bob.send("alice: are you there?").await;
    screen.status_shows("[Act: 2!]").await;
    // /window 1: the status window; Alt-2 back to #a.
    screen.burst("/window 1\r");
    screen.status_shows("[1:(status)]").await;
    screen.burst("\x1b2");
    screen.status_shows("[2:#a]").await;
    screen.shows("<bob> alice: are you there?").await;

    // A burst of lines in one write: each is sent, in order.
    screen.burst("one\rtwo\rthree\r");
    for want in ["one", "two", "three"] {
        assert_eq!(bob.event("message").await["body"], want);
    }

    // Enough lines to scroll: PageUp shows older ones and says so.
    for i in 0..40 {
        bob.send(&format!("filler {i}")).await;
    }
    screen.shows("<bob> filler 39").await;
    screen.burst("\x1b[5~");
    screen.status_shows("-- more --").await;
    assert_eq!(screen.count("filler 39"), 0);
    screen.burst("\x1b[6~");
    screen.shows("<bob> filler 39").await;

    // Smaller: everything drawn again at the new size, nothing stale.
    screen.resize(16, 50);
    screen
        .row_where("the status bar on row 15", |_| {
            let rows = screen.rows();
            rows.len() == 16 && rows[14].contains("[2:#a]")
        })
        .await;
    screen.shows("<bob> filler 39").await;
    screen.type_keys("/quit\r").await;
    assert_eq!(screen.exit_code().await, Some(0));
    // The terminal is given back.
    assert!(!screen.term.lock().unwrap().screen().alternate_screen());
    screen.assert_no_log_lines();
    bob.quit().await;
    carol.quit().await;
    router.terminate().await;
}

/// A restart shows, in the room's window, what came while the peer was
/// away, under a marker line; a nick change reads as one line; /lastlog
/// finds a line in any conversation.
#[tokio::test]
async fn a_restart_shows_what_came_under_a_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &["--join", "#a"]).await;
    bob.event("joined").await;
    let dir = tmp.path().join("alice");
    let args = [
        "--nick",
        "alice",
        "--router",
        &addr,
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    let mut screen = Screen::full(&args);
    screen.status_shows("[1:(status)]").await;
    screen.burst("/join #a\r");
    screen.status_shows("[2:#a]").await;
    screen.burst("/ignore zed\r");
    screen.shows("-- ignoring zed").await;
    screen.burst("/quit\r");
    assert_eq!(screen.exit_code().await, Some(0));
    drop(screen);

    for line in ["while you were out", "alice: a mention", "third"] {
        bob.send(line).await;
        bob.event("sent").await;
    }
    let mut screen = Screen::full(&args);
    // Back in #a, its window current, the three under the marker.
    screen.status_shows("[2:#a]").await;
    let marker = screen.shows("3 new since you left").await;
    assert!(marker.contains("───"), "a marker line: {marker}");
    screen.shows("<bob> third").await;
    let rows = screen.rows();
    let at = |what: &str| rows.iter().position(|r| r.contains(what)).unwrap();
    assert!(at("3 new since you left") < at("while you were out"));
    assert!(at("while you were out") < at("alice: a mention"));

    // bob becomes robert: one line in the room, and the nick list follows.
    bob.send("/nick robert").await;
    screen.shows("-- bob is now known as robert").await;
    screen
        .row_where("robert in the nick list", |r| r.contains("│robert"))
        .await;

    // Who is ignored is kept across the restart; an ignored nick's lines
    // are not shown, and shown again after /unignore.
    screen.burst("/ignore\r");
    screen.shows("-- ignoring: zed").await;
    screen.burst("/ignore robert\r");
    screen.shows("-- ignoring robert").await;
    bob.send("a hidden line").await;
    bob.event("sent").await;
    // Stored there before "sent"; a moment for its event to be shown (or
    // not) before the next key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    screen.burst("/unignore robert\r");
    screen.shows("-- no longer ignoring robert").await;
    bob.send("a visible line").await;
    screen.shows("<robert> a visible line").await;
    assert_eq!(screen.count("a hidden line"), 0);

    // /lastlog: the local history's lines with the words.
    screen.burst("/lastlog were out\r");
    screen
        .shows("-- history of lastlog were out: last 1 message")
        .await;
    screen.burst("/quit\r");
    assert_eq!(screen.exit_code().await, Some(0));
    bob.quit().await;
    router.terminate().await;
}
