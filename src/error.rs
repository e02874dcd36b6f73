//! Exit codes and the error type for bad input (exit code 2).

/// Exit code for success (and, for `run`, "the success criterion was met").
pub const EXIT_OK: u8 = 0;
/// Exit code for "finished, but the success criterion was not met".
pub const EXIT_NOT_MET: u8 = 1;
/// Exit code for any error: bad input, a failed script, a missing file.
pub const EXIT_ERROR: u8 = 2;
/// Exit code after Ctrl-C / SIGTERM (the usual 128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;
