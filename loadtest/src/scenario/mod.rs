//! One module per scenario; each returns a `Report`.

pub mod deliver;
pub mod idle;
pub mod presence;
pub mod recovery;
pub mod storm;
