//! The independent float reference: tract running the original (unfolded) ONNX file.

use std::path::Path;

use tract_onnx::prelude::*;

/// A model loaded and optimised by tract, ready to run on `[1, C, H, W]` inputs.
pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
}

impl TractModel {
    pub fn load(path: &Path, input_shape: &[usize]) -> anyhow::Result<Self> {
        let plan = tract_onnx::onnx()
            .model_for_path(path)?
            .with_input_fact(0, f32::fact(input_shape).into())?
            .into_optimized()?
            .into_runnable()?;
        Ok(TractModel {
            plan,
            input_shape: input_shape.to_vec(),
        })
    }

    /// Runs one NCHW input and returns the first output's values.
    pub fn run(&self, input: &[f32]) -> anyhow::Result<Vec<f32>> {
        let tensor = Tensor::from_shape(&self.input_shape, input)?;
        let outputs = self.plan.run(tvec!(tensor.into()))?;
        Ok(outputs[0]
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect())
    }
}
