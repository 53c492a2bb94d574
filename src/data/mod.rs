//! Training data for the embedded default model: the procedural shapes dataset and the
//! attribute checker that scores generated images.

pub mod checker;
pub mod shapes;
