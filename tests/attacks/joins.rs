//! Insider attacks (issue 23): see tests/attacks.rs.

#[allow(unused_imports)]
use crate::common::*;
