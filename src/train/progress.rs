//! A terminal progress bar for `starflow-studio train`: one bar per stage with the latest loss
//! (and bits per dimension) in its message; snapshots and notes go to the log.

use std::ops::ControlFlow;

use super::{Stage, TrainEvent};

/// Draws training progress on stderr.
#[derive(Default)]
pub struct TerminalProgress {
    bar: Option<pbr::ProgressBar<std::io::Stderr>>,
}

impl TerminalProgress {
    pub fn new() -> Self {
        Self::default()
    }

    /// Show `event`; never stops the run.
    pub fn observe(&mut self, event: &TrainEvent) -> ControlFlow<()> {
        match event {
            TrainEvent::Stage { stage, steps, start_step } => {
                if let Some(bar) = self.bar.as_mut() {
                    bar.finish_println("");
                }
                let mut bar = pbr::ProgressBar::on(std::io::stderr(), *steps as u64);
                bar.set(*start_step as u64);
                let name = match stage {
                    Stage::Autoencoder => "autoencoder",
                    Stage::Joint => "text + flow",
                    Stage::Decoder => "decoder",
                };
                bar.message(&format!("{name} "));
                self.bar = Some(bar);
            }
            TrainEvent::Step { point, step_secs, .. } => {
                let text = match point.bits_per_dim {
                    Some(bpd) => {
                        format!("loss {:.4} bpd {bpd:.4} ({step_secs:.2} s/step) ", point.loss)
                    }
                    None => format!("mse {:.5} ({step_secs:.2} s/step) ", point.loss),
                };
                log::trace!("{:?} step {}: {text}", point.stage, point.step);
                if let Some(bar) = self.bar.as_mut() {
                    bar.message(&text);
                    bar.set(point.step as u64 + 1);
                }
            }
            TrainEvent::Checkpoint { stage, step, path } => {
                log::debug!("{stage:?} snapshot after {step} steps: {path:?}");
            }
            TrainEvent::Note(note) => {
                if let Some(bar) = self.bar.as_mut() {
                    bar.finish_println("");
                }
                self.bar = None;
                log::info!("{note}");
            }
        }
        ControlFlow::Continue(())
    }
}
