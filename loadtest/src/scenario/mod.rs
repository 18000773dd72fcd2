//! One module per scenario; each returns a `Report`.

pub mod deliver;
pub mod idle;
pub mod presence;
pub mod storm;
