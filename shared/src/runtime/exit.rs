//! Exit statuses, the same for both binaries.

use std::process::ExitCode;

/// How a binary ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done, or stopped by a signal after an orderly shutdown.
    Ok,
    /// A runtime failure: cannot bind, a command failed, a job failed.
    Failure,
    /// The configuration is invalid (EX_USAGE from sysexits.h); the message
    /// names the offending key.
    Config,
}

impl Exit {
    pub const CONFIG_STATUS: u8 = 64;

    pub fn code(self) -> ExitCode {
        match self {
            Exit::Ok => ExitCode::SUCCESS,
            Exit::Failure => ExitCode::from(1),
            Exit::Config => ExitCode::from(Self::CONFIG_STATUS),
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        e.code()
    }
}
