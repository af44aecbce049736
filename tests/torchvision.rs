//! The networks held to torchvision's numbers, with no torch here: the
//! fixtures in tests/data/torchvision/ (made once by
//! scripts/torchvision-fixtures.py) are torchvision's logits, loss and
//! gradient statistics in f64 for candle-mpi's own seeded initial weights
//! and input batch, each with its spread: how far torchvision's own f32 run
//! strays from the f64 one. Each test builds the same weights and batch
//! again, runs one forward and backward pass in f32 and compares: logits and
//! loss within 1e-4 relative, every parameter's gradient norm within 1e-3
//! relative, its sum and sampled elements within 1e-3 of the gradient's
//! scale; or, where torchvision's own f32 strays further (ResNet50's
//! training-mode batch norms), within three times its spread.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_mpi::data::{stack, Synthetic};
use candle_mpi::model::params::ParamStore;
use candle_mpi::model::{ModelConfig, ModelKind};

fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/torchvision").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// |got - want| within `tol` of `scale` or three times the f32 `spread`,
/// or a message saying by how much not.
fn within(got: f64, want: f64, tol: f64, scale: f64, spread: f64, what: &str) -> Result<(), String> {
    let off = (got - want).abs();
    let allowed = (tol * scale).max(3.0 * spread).max(1e-12);
    if off <= allowed {
        Ok(())
    } else {
        Err(format!("{what}: {got} against torchvision's {want} (off by {off:.2e}, allowed {allowed:.2e})"))
    }
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap()
}

/// Logits, loss, and each parameter's gradient by name.
type Outcome = (Vec<Vec<f64>>, f64, Vec<(String, Vec<f64>)>);

/// The logits and loss of one forward pass in the fixture's mode, and the
/// gradients of the loss, for its network, weights and batch, in `dtype`
/// (f64 runs candle's own ops: candle-mpi's CPU ops are f32).
fn ours(f: &serde_json::Value, dtype: DType) -> Outcome {
    let kind: ModelKind = serde_json::from_value(f["model"].clone()).unwrap();
    let [size, classes, seed, n] = ["image_size", "classes", "seed", "batch"].map(|k| f[k].as_u64().unwrap() as usize);
    let dev = Device::Cpu;
    let store = ParamStore::new(seed as u64);
    let cfg = ModelConfig { dropout: Some(0.0), ..ModelConfig::new(classes, size) };
    let net = kind.build(&cfg, store.var_builder(dtype, &dev)).unwrap();
    let data = Synthetic { len: n, classes, seed: seed as u64 };
    let (pixels, labels) = stack(&data, &(0..n).collect::<Vec<_>>(), size, None).unwrap();
    let x = Tensor::from_vec(pixels, (n, 3, size, size), &dev).unwrap().to_dtype(dtype).unwrap();
    let y = Tensor::from_vec(labels, n, &dev).unwrap();
    let logits = net.forward_t(&x, f["mode"] == "train").unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    // The trainer's backward (parameter gradients handed over by our ops).
    let grads = candle_mpi::ops::param_grads::backward(&loss).unwrap();
    let g = store
        .trainable_sorted()
        .into_iter()
        .map(|(name, var)| {
            let g = grads.get(var.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
            (name, g.flatten_all().unwrap().to_vec1::<f64>().unwrap())
        })
        .collect();
    let logits = logits.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
    (logits, loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), g)
}

/// How closely a run is held: the tolerances of the logits and loss, of
/// the gradients (both relative), and whether the gradients are compared.
#[derive(Clone, Copy)]
struct Hold {
    dtype: DType,
    forward: f64,
    gradients: Option<f64>,
}

const F32: Hold = Hold { dtype: DType::F32, forward: 1e-4, gradients: Some(1e-3) };

fn compare(name: &str, hold: Hold) {
    let f = fixture(name);
    let (logits, loss, grads) = ours(&f, hold.dtype);
    // In f64 both sides compute the exact values: the f32 spread is no excuse there.
    let spread = |v: &serde_json::Value| if hold.dtype == DType::F64 { 0.0 } else { num(v) };
    let mut wrong = vec![];
    let want = f["logits"].as_array().unwrap();
    let scale = want.iter().flat_map(|r| r.as_array().unwrap()).map(|v| num(v).abs()).fold(0.0, f64::max);
    for (i, (g, w)) in logits.iter().zip(want).enumerate() {
        for (j, (g, w)) in g.iter().zip(w.as_array().unwrap()).enumerate() {
            let at = format!("logit [{i}][{j}]");
            wrong.extend(within(*g, num(w), hold.forward, scale, spread(&f["logits_spread"]), &at).err());
        }
    }
    wrong.extend(within(loss, num(&f["loss"]), hold.forward, num(&f["loss"]), spread(&f["loss_spread"]), "loss").err());
    let expected = f["grads"].as_object().unwrap();
    assert_eq!(grads.len(), expected.len(), "{name}: parameters against torchvision's");
    let Some(tol) = hold.gradients else {
        assert!(
            wrong.is_empty(),
            "{name}: {} of torchvision's numbers not matched:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
        return;
    };
    for (pname, g) in grads {
        let e = expected.get(&pname).unwrap_or_else(|| panic!("{name}: torchvision has no parameter {pname}"));
        let l2 = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let want_l2 = num(&e["l2"]);
        wrong.extend(
            within(l2, want_l2, tol, want_l2, spread(&e["l2_spread"]), &format!("{pname}: gradient norm")).err(),
        );
        // Sums and single elements against the gradient's own scale (a sum may cancel to nothing).
        let rms = want_l2 / (g.len() as f64).sqrt();
        let sum = g.iter().sum();
        let at_sum = format!("{pname}: gradient sum");
        let sum_scale = want_l2 * (g.len() as f64).sqrt();
        wrong.extend(within(sum, num(&e["sum"]), tol, sum_scale, spread(&e["sum_spread"]), &at_sum).err());
        for s in e["sample"].as_array().unwrap() {
            let (at, v) = (s[0].as_u64().unwrap() as usize, num(&s[1]));
            wrong.extend(
                within(g[at], v, tol, rms.max(v.abs()), spread(&s[2]), &format!("{pname}: gradient [{at}]")).err(),
            );
        }
    }
    assert!(wrong.is_empty(), "{name}: {} of torchvision's numbers not matched:\n{}", wrong.len(), wrong.join("\n"));
}

#[test]
fn alexnet_matches_torchvision() {
    compare("alexnet-train", F32);
}

#[test]
fn vgg16_matches_torchvision() {
    compare("vgg16-train", F32);
}

#[test]
fn googlenet_matches_torchvision() {
    compare("googlenet-train", F32);
}

/// Evaluation mode: batch norm from its running statistics, not the batch's.
#[test]
fn resnet50_in_eval_mode_matches_torchvision() {
    compare("resnet50-eval", F32);
}

/// Training mode in f32, forward only. Batch norm's backward over few
/// values, 53 times over, makes ResNet50's training-mode gradients
/// ill-conditioned at initialisation: torchvision's own f32 gradient norms
/// stray from its f64 ones further than the 1e-3 target (the fixture's
/// spreads; README "Held to torchvision" has the figures), and every f32
/// implementation strays in its own direction. A fixed f32 tolerance would
/// test rounding; the gradients are held in f64 below, and candle-mpi's f32
/// ops by their own tests.
#[test]
fn resnet50_matches_torchvision_forward_in_f32() {
    compare("resnet50-train", Hold { gradients: None, ..F32 });
}

/// Training mode in f64, everything: the network's structure and batch
/// norm's training semantics exactly (within 1e-6), gradients included.
#[test]
fn resnet50_matches_torchvision_in_f64() {
    compare("resnet50-train", Hold { dtype: DType::F64, forward: 1e-6, gradients: Some(1e-6) });
}
