//! The panels, one file each. Panels edit settings directly and ask for side effects through
//! [`Action`]s, which `app.rs` carries out after drawing.

use std::path::PathBuf;

pub mod channels;
pub mod controls;
pub mod export_bar;
pub mod history;
pub mod model_bar;
pub mod status;
pub mod viewer;

/// What a panel asks the app to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Generate,
    Cancel,
    LoadModel(PathBuf),
    BrowseModel,
    RestartWorker,
    SaveToPath,
    SaveDialog,
    SaveStrip,
    Copy,
    FormatChanged,
    HistoryReuse(usize),
    HistoryExport(usize),
    HistoryDelete(usize),
}
