//! The process's exit codes, in one place (README, "Exit codes").

/// Exit code for success (and, for `run`, "the success criterion was met").
pub const EXIT_OK: u8 = 0;
/// Exit code for "ran to its end without the wanted result": `run --fail-if-unmet` when no iteration met
/// the criterion, `generate` when no usable notebook came back.
pub const EXIT_NOT_MET: u8 = 1;
/// Exit code for any error: bad input, a failed script, a missing file.
pub const EXIT_ERROR: u8 = 2;
/// Exit code after Ctrl-C / SIGTERM (the usual 128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;
