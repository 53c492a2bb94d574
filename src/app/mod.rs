//! The desktop window.
//!
//! TODO(#5): the real app (prompt, settings, live preview, flow scrubber, export, history)
//! replaces this placeholder, which only shows that the window and its renderer start.

/// Open the window and block until it is closed.
pub fn run() -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("STARFlow Studio")
            .with_inner_size([720.0, 480.0]),
        ..Default::default()
    };
    eframe::run_native("STARFlow Studio", options, Box::new(|_cc| Ok(Box::new(Placeholder))))
        .map_err(|err| anyhow::anyhow!("The window could not be opened: {err}. A desktop session (X11 or Wayland) with a GPU driver or Mesa is needed; use `starflow-studio generate` without one."))
}

struct Placeholder;

impl eframe::App for Placeholder {
    fn ui(&mut self, ui: &mut eframe::egui::Ui, _frame: &mut eframe::Frame) {
        eframe::egui::CentralPanel::default().show(ui, |ui| {
            ui.heading("STARFlow Studio");
            ui.label("The image generator window is being built (issue #5).");
            ui.label("Today, generate images from the command line: starflow-studio generate --help");
        });
    }
}
