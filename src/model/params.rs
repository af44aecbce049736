//! The parameter store: named variables with seeded initialisation.
//!
//! A `ParamStore` backs a candle `VarBuilder`. Each variable is initialised from
//! its own random stream keyed by `(seed, name)`, so the same `--seed` gives the
//! same weights on every rank and every run, whatever order the layers are built
//! in. Batch-norm running statistics live here too (candle keeps them as `Var`s),
//! but they are buffers, not parameters: they get no gradient and are not counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::rng::{hash_str, Rng};

/// Names ending in one of these are buffers (state), not trainable parameters.
const BUFFER_SUFFIXES: [&str; 2] = ["running_mean", "running_var"];

/// True for names of buffers such as batch-norm running statistics.
pub fn is_buffer(name: &str) -> bool {
    BUFFER_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Named variables, shared by clones (the same store behind every `VarBuilder`).
#[derive(Clone)]
pub struct ParamStore {
    vars: Arc<Mutex<HashMap<String, Var>>>,
    seed: u64,
}

impl ParamStore {
    pub fn new(seed: u64) -> Self {
        Self { vars: Arc::new(Mutex::new(HashMap::new())), seed }
    }

    /// A `VarBuilder` whose `get` creates variables in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Every variable, parameters and buffers, sorted by name (a fixed order for all ranks).
    pub fn all_sorted(&self) -> Vec<(String, Var)> {
        let vars = self.vars.lock().expect("parameter store lock poisoned");
        let mut all: Vec<(String, Var)> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Trainable parameters only, sorted by name.
    pub fn trainable_sorted(&self) -> Vec<(String, Var)> {
        self.all_sorted().into_iter().filter(|(name, _)| !is_buffer(name)).collect()
    }

    /// Number of trainable scalars (what torchvision calls the parameter count).
    pub fn parameter_count(&self) -> usize {
        self.trainable_sorted().iter().map(|(_, v)| v.as_tensor().elem_count()).sum()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.vars.lock().expect("parameter store lock poisoned").get(name).cloned()
    }

    fn init_tensor(&self, shape: &Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut rng = Rng::keyed(self.seed, hash_str(name));
        let values: Vec<f32> = match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => (0..n).map(|_| (mean + stdev * rng.normal()) as f32).collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| rng.uniform_in(lo, up) as f32).collect(),
            Init::Kaiming { dist, fan, non_linearity } => {
                let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => (0..n).map(|_| (std * rng.normal()) as f32).collect(),
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0..n).map(|_| rng.uniform_in(-bound, bound) as f32).collect()
                    }
                }
            }
        };
        Tensor::from_vec(values, shape.clone(), dev)?.to_dtype(dtype)
    }
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(var) = self.get(name) {
            if var.shape() != &s {
                candle_core::bail!("parameter {name} already exists with shape {:?}, asked for {:?}", var.shape(), s);
            }
            return var.as_tensor().to_dtype(dtype);
        }
        let tensor = self.init_tensor(&s, name, h, dtype, dev)?;
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        self.vars.lock().expect("parameter store lock poisoned").insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no parameter named {name} in the store"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.lock().expect("parameter store lock poisoned").contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_weights_in_any_order() {
        let dev = Device::Cpu;
        let a = ParamStore::new(5);
        let b = ParamStore::new(5);
        let va = a.var_builder(DType::F32, &dev);
        let vb = b.var_builder(DType::F32, &dev);
        let init = Init::Randn { mean: 0.0, stdev: 1.0 };
        let a1 = va.get_with_hints((3, 4), "x.weight", init).unwrap();
        let a2 = va.get_with_hints(7, "y.bias", init).unwrap();
        // Built in the other order.
        let b2 = vb.get_with_hints(7, "y.bias", init).unwrap();
        let b1 = vb.get_with_hints((3, 4), "x.weight", init).unwrap();
        assert_eq!(a1.to_vec2::<f32>().unwrap(), b1.to_vec2::<f32>().unwrap());
        assert_eq!(a2.to_vec1::<f32>().unwrap(), b2.to_vec1::<f32>().unwrap());
        let c = ParamStore::new(6);
        let c1 = c.var_builder(DType::F32, &dev).get_with_hints((3, 4), "x.weight", init).unwrap();
        assert_ne!(a1.to_vec2::<f32>().unwrap(), c1.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn buffers_are_not_parameters() {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let _bn = candle_nn::batch_norm(4, candle_nn::BatchNormConfig::default(), vb.pp("bn")).unwrap();
        assert_eq!(store.all_sorted().len(), 4);
        let names: Vec<String> = store.trainable_sorted().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["bn.bias".to_string(), "bn.weight".to_string()]);
        assert_eq!(store.parameter_count(), 8);
    }

    #[test]
    fn kaiming_normal_has_the_right_spread() {
        let store = ParamStore::new(1);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let w = vb.get_with_hints((64, 32, 3, 3), "w", candle_nn::init::DEFAULT_KAIMING_NORMAL).unwrap();
        let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        let expected = 2.0 / (32.0 * 9.0);
        assert!((var / expected - 1.0).abs() < 0.05, "variance {var}, expected {expected}");
    }
}
