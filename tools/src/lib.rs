//! Host side of Kestrel: everything left of the `.kes` file.
//!
//! ONNX import ([`onnx_import`]) into Kestrel's float [`graph`], BatchNorm folding and
//! ReLU/Add fusion ([`passes`]), the float reference executor ([`reference`]) checked
//! against tract ([`tract_ref`]), image preprocessing ([`preprocess`]), model cards
//! ([`card`]) and synthetic ResNets written as ONNX ([`synth`]); then calibration
//! ([`calibrate`]), quantisation and lowering ([`quantize`]), the static memory plan
//! ([`plan`]), the streamed stem ([`stem`]), `.kes` compilation ([`compile`]), accuracy measurement ([`eval`]) and board
//! packages ([`package`]).

pub mod bench;
pub mod bias_correction;
pub mod calibrate;
pub mod card;
pub mod check;
pub mod compare;
pub mod compile;
pub mod dataset;
pub mod equalize;
pub mod eval;
pub mod graph;
pub mod inspect;
pub mod onnx_import;
pub mod package;
pub mod parallel;
pub mod passes;
pub mod plan;
pub mod precision;
pub mod preprocess;
pub mod quantize;
pub mod reference;
pub mod stem;
pub mod synth;
pub mod tract_ref;
