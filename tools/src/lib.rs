//! Host side of Kestrel: everything left of the `.kes` file.
//!
//! ONNX import ([`onnx_import`]) into Kestrel's float [`graph`], BatchNorm folding and
//! ReLU/Add fusion ([`passes`]), the float reference executor ([`reference`]) checked
//! against tract ([`tract_ref`]), image preprocessing ([`preprocess`]), model cards
//! ([`card`]) and synthetic ResNets written as ONNX ([`synth`]).

pub mod card;
pub mod check;
pub mod dataset;
pub mod graph;
pub mod onnx_import;
pub mod passes;
pub mod preprocess;
pub mod reference;
pub mod synth;
pub mod tract_ref;
