//! Classifying images with a float ONNX model or an int8 `.kes`, and measuring accuracy.

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::card::LoadedCard;
use crate::compile;
use crate::dataset::{self, Truth};
use crate::graph::Graph;
use crate::preprocess::Preprocess;
use crate::reference;

/// A model that turns preprocessed NCHW images into logits.
pub enum Classifier {
    Float { graph: Graph },
    Int8 { bytes: Vec<u8> },
}

/// Preprocessed NCHW input → logits; one per thread (an int8 runner owns its arena).
pub type Runner<'a> = Box<dyn FnMut(&[f32]) -> anyhow::Result<Vec<f32>> + 'a>;

/// A classifier with its preprocessing and labels.
pub struct Loaded {
    pub classifier: Classifier,
    pub preprocess: Preprocess,
    pub labels: Vec<String>,
    /// Int8 kernel family (`None`: the fastest this CPU runs).
    pub kernels: Option<kestrel_runtime::Isa>,
    /// Int8 inference threads.
    pub threads: usize,
}

impl Loaded {
    /// Opens a `.kes` (by its magic) or an ONNX model.
    pub fn open(path: &Path, card: Option<&LoadedCard>) -> anyhow::Result<Loaded> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.starts_with(&kestrel_format::MAGIC) {
            let model = kestrel_runtime::Model::parse(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let file = model.file();
            let preprocess = match card {
                Some(c) => c.preprocess(),
                None => Preprocess::from_info(&file.preprocess),
            };
            let labels = (0..file.label_count())
                .filter_map(|i| file.label(i).map(str::to_owned))
                .collect();
            Ok(Loaded {
                classifier: Classifier::Int8 { bytes },
                preprocess,
                labels,
                kernels: None,
                threads: 1,
            })
        } else {
            let p = compile::prepare(path, card)?;
            Ok(Loaded {
                classifier: Classifier::Float { graph: p.graph },
                preprocess: p.preprocess,
                labels: p.labels,
                kernels: None,
                threads: 1,
            })
        }
    }

    /// For a `.kes` packed for another CPU family than this one's best kernels (when no
    /// kernels were asked for): what that costs, to print as a warning.
    pub fn kernel_mismatch(&self) -> Option<String> {
        let (Classifier::Int8 { bytes }, None) = (&self.classifier, self.kernels) else {
            return None;
        };
        let model = kestrel_runtime::Model::parse(bytes).ok()?;
        let kernels = kestrel_runtime::CpuFeatures::available().best();
        model.kernel_mismatch(kernels).map(|m| {
            format!(
                "{m}; compile with --target {} for this machine",
                compile::Target::host().name()
            )
        })
    }

    /// Values in one preprocessed input.
    pub fn input_len(&self) -> usize {
        let s = &self.preprocess.size;
        3 * s[0] * s[1]
    }

    /// Number of classes (logits).
    pub fn classes(&self) -> usize {
        match &self.classifier {
            Classifier::Float { graph } => graph.values[graph.output].len(),
            Classifier::Int8 { bytes } => {
                kestrel_runtime::Model::parse(bytes).map_or(0, |m| m.classes())
            }
        }
    }

    /// A per-thread function from preprocessed input to logits.
    pub fn runner(&self) -> anyhow::Result<Runner<'_>> {
        match &self.classifier {
            Classifier::Float { graph } => Ok(Box::new(move |x| Ok(reference::run(graph, x)?))),
            Classifier::Int8 { bytes } => {
                let model =
                    kestrel_runtime::Model::parse(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut arena = vec![0u8; model.arena_bytes()];
                let mut logits = vec![0f32; model.classes()];
                let kernels = self.kernels;
                let pool = crate::bench::thread_pool(self.threads, &model)?;
                Ok(Box::new(move |x| {
                    let mut session = match kernels {
                        Some(isa) => {
                            kestrel_runtime::Session::with_kernels(&model, &mut arena, isa)
                        }
                        None => kestrel_runtime::Session::new(&model, &mut arena),
                    }
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                    if let Some(pool) = &pool {
                        session.set_parallel(pool);
                    }
                    session
                        .set_input_nchw_f32(x)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    session.run();
                    session
                        .logits(&mut logits)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    Ok(logits.clone())
                }))
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    /// Against the float model, when given one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
}

/// How often a quantised model picks its float model's class, and where it does not.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    pub float_model: String,
    pub float_top1: f64,
    pub top1_agreement: f64,
    pub flipped: Vec<Flip>,
}

/// An image on which the quantised model's top class is not the float model's.
#[derive(Clone, Debug, Serialize)]
pub struct Flip {
    pub image: String,
    pub float_class: usize,
    pub quantized_class: usize,
}

/// Indices of the `k` largest logits, largest first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Where the labelled images of an evaluation come from.
#[derive(Clone, Copy, Debug)]
pub enum EvalSet<'a> {
    /// `DIR/<class>/<image>`: the folder names are labels.
    ClassFolders(&'a Path),
    /// A labels file (`path index` or `path,label` lines) naming images under `dir`.
    LabelsFile { file: &'a Path, dir: &'a Path },
}

/// The images of `set` with their class indices (labels looked up in the model's labels).
pub fn labelled_images(model: &Loaded, set: EvalSet) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let lookup = |label: &str, what: &str| {
        model
            .labels
            .iter()
            .position(|l| l == label)
            .with_context(|| {
                format!(
                    "{what} '{label}' is not one of the model's labels ({})",
                    model.labels.join(", ")
                )
            })
    };
    match set {
        EvalSet::ClassFolders(dir) => {
            let images = dataset::list(dir)?;
            anyhow::ensure!(
                !model.labels.is_empty(),
                "the model has no labels: pass --card with a labels file"
            );
            images
                .into_iter()
                .map(|img| Ok((img.path, lookup(&img.class, "folder")?)))
                .collect()
        }
        EvalSet::LabelsFile { file, dir } => {
            let classes = model.classes();
            dataset::read_labels_file(file, dir)?
                .into_iter()
                .map(|(path, truth)| {
                    let index = match truth {
                        Truth::Index(i) => {
                            anyhow::ensure!(
                                i < classes,
                                "{}: class index {i} of {} is not below the model's {classes} classes",
                                file.display(),
                                path.display()
                            );
                            i
                        }
                        Truth::Label(l) => lookup(&l, "label")?,
                    };
                    Ok((path, index))
                })
                .collect()
        }
    }
}

/// Top-1/top-5 over the images of `set`.
pub fn evaluate(
    model: &Loaded,
    name: &str,
    set: EvalSet,
    limit: Option<usize>,
    progress: bool,
) -> anyhow::Result<EvalReport> {
    evaluate_against(model, name, None, set, limit, progress)
}

/// [`evaluate`], and with `float` (its float model and name) also the top-1 agreement
/// with it and the images where the two disagree.
pub fn evaluate_against(
    model: &Loaded,
    name: &str,
    float: Option<(&Loaded, &str)>,
    set: EvalSet,
    limit: Option<usize>,
    progress: bool,
) -> anyhow::Result<EvalReport> {
    let mut labelled = labelled_images(model, set)?;
    if let Some(n) = limit {
        labelled = dataset::spread(&labelled, n);
    }
    let bar = if progress {
        ProgressBar::new(labelled.len() as u64).with_style(
            ProgressStyle::with_template("evaluating {bar:30} {pos}/{len}")
                .expect("static template"),
        )
    } else {
        ProgressBar::hidden()
    };
    struct Counts {
        top1: usize,
        top5: usize,
        float_top1: usize,
        flipped: Vec<Flip>,
    }
    let counts = crate::parallel::map_chunks(&labelled, |part| {
        let mut run = model.runner()?;
        let mut run_float = float.map(|(f, _)| f.runner()).transpose()?;
        let mut c = Counts {
            top1: 0,
            top5: 0,
            float_top1: 0,
            flipped: Vec::new(),
        };
        for (path, t) in part {
            let x = model.preprocess.load(path)?;
            let best = top_k(&run(&x)?, 5);
            c.top1 += (best[0] == *t) as usize;
            c.top5 += best.contains(t) as usize;
            if let Some(run_float) = run_float.as_mut() {
                let float_best = top_k(&run_float(&x)?, 1)[0];
                c.float_top1 += (float_best == *t) as usize;
                if float_best != best[0] {
                    c.flipped.push(Flip {
                        image: path.display().to_string(),
                        float_class: float_best,
                        quantized_class: best[0],
                    });
                }
            }
            bar.inc(1);
        }
        Ok(c)
    })?;
    bar.finish_and_clear();
    let n = labelled.len().max(1) as f64;
    let (top1, top5, float_top1) = counts.iter().fold((0, 0, 0), |(a, b, f), c| {
        (a + c.top1, b + c.top5, f + c.float_top1)
    });
    let flipped: Vec<Flip> = counts.into_iter().flat_map(|c| c.flipped).collect();
    Ok(EvalReport {
        model: name.to_string(),
        images: labelled.len(),
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        agreement: float.map(|(_, float_name)| Agreement {
            float_model: float_name.to_string(),
            float_top1: float_top1 as f64 / n,
            top1_agreement: 1.0 - flipped.len() as f64 / n,
            flipped,
        }),
    })
}

/// The text `kestrel eval` prints (`labels` name the classes of flipped images).
pub fn print(r: &EvalReport, labels: &[String]) {
    println!(
        "{}: top-1 {:.2}%, top-5 {:.2}% on {} images",
        r.model,
        100.0 * r.top1,
        100.0 * r.top5,
        r.images
    );
    let Some(a) = &r.agreement else {
        return;
    };
    println!(
        "float {}: top-1 {:.2}%; the two pick the same class on {:.2}% of images ({} flipped)",
        a.float_model,
        100.0 * a.float_top1,
        100.0 * a.top1_agreement,
        a.flipped.len()
    );
    let label = |i: usize| labels.get(i).cloned().unwrap_or_else(|| i.to_string());
    const SHOWN: usize = 20;
    for f in a.flipped.iter().take(SHOWN) {
        println!(
            "  {}: float {}, quantised {}",
            f.image,
            label(f.float_class),
            label(f.quantized_class)
        );
    }
    if a.flipped.len() > SHOWN {
        println!(
            "  … and {} more (--json lists all)",
            a.flipped.len() - SHOWN
        );
    }
}
