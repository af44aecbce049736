//! Parameter gradients put straight into the step's gradient store.
//!
//! candle's backward adds every gradient an op returns to a zero-filled
//! tensor of its size: for a parameter, three buffers of its size at once
//! (the op's product, the zeros, the sum) and a fill and an add on one
//! thread. PyTorch's AccumulateGrad keeps a parameter's first gradient as it
//! comes, and so does `backward` here: while it runs, our ops (convolution,
//! linear, batch norm) hand a variable's gradient to `hand_over` instead of
//! returning it to candle, and `backward` puts it into the store afterwards
//! (adding where a parameter has several). Outside `backward` (a test calling
//! candle's backward itself) `hand_over` gives the gradient back for candle.
//! The values are the same either way but for a zero's sign: candle's
//! 0 + (-0) is +0, where a handed-over -0 stays -0.

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};

thread_local! {
    /// The gradients handed over during the `backward` running on this thread.
    static HANDED: RefCell<Option<Vec<(Tensor, Tensor)>>> = const { RefCell::new(None) };
}

/// candle's backward of `loss`, with the parameter gradients our ops handed
/// over put into the store.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    let collecting = Collecting::start();
    let store = loss.backward();
    let handed = collecting.finish();
    let mut store = store?;
    for (param, grad) in handed {
        let sum = match store.remove(&param) {
            Some(earlier) => (earlier + grad)?,
            None => grad,
        };
        store.insert(&param, sum);
    }
    Ok(store)
}

/// The collection of one `backward`: ended by `finish`, or, should
/// backward panic, by the unwind dropping it, so that no list outlives its
/// backward on this thread.
struct Collecting {
    /// What the thread collected before (`None` outside any `backward`).
    outer: Option<Vec<(Tensor, Tensor)>>,
    finished: bool,
}

impl Collecting {
    fn start() -> Self {
        Self { outer: HANDED.replace(Some(Vec::new())), finished: false }
    }

    /// What was handed over; the thread goes back to what it collected before.
    fn finish(mut self) -> Vec<(Tensor, Tensor)> {
        self.finished = true;
        HANDED.replace(self.outer.take()).unwrap_or_default()
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        if !self.finished {
            HANDED.set(self.outer.take());
        }
    }
}

/// For an op's backward: `grad` as the gradient of `param`. Kept for the
/// store when `param` is a variable and `backward` runs on this thread
/// (`None`: candle has nothing to add), else given back for candle.
pub fn hand_over(param: &Tensor, grad: Tensor) -> Option<Tensor> {
    if !param.is_variable() {
        return Some(grad);
    }
    HANDED.with_borrow_mut(|handed| match handed {
        Some(list) => {
            list.push((param.clone(), grad));
            None
        }
        None => Some(grad),
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// A loss that reaches `w` twice: once through an op that hands its
    /// gradient over, once through candle's own ops.
    fn loss(w: &Var, x: &Tensor) -> Tensor {
        let handing = x.apply_op2(w.as_tensor(), Scale).unwrap();
        let through_candle = (w.as_tensor() * x).unwrap();
        (handing + through_candle).unwrap().sum_all().unwrap()
    }

    /// x * w, whose backward hands w's gradient over.
    struct Scale;

    impl candle_core::CustomOp2 for Scale {
        fn name(&self) -> &'static str {
            "scale"
        }
        fn cpu_fwd(
            &self,
            s1: &candle_core::CpuStorage,
            l1: &candle_core::Layout,
            s2: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
            let (x, w) = (s1.as_slice::<f32>()?, s2.as_slice::<f32>()?);
            let y = x.iter().zip(w).map(|(a, b)| a * b).collect();
            Ok((candle_core::CpuStorage::F32(y), l1.shape().clone()))
        }
        fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
            Ok((Some((dy * w)?), hand_over(w, (dy * x)?)))
        }
    }

    #[test]
    fn handed_gradients_equal_candles_own_accumulation() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[1.5f32, -2.0, 0.25], &dev).unwrap();
        let w = Var::new(&[0.5f32, 3.0, -1.0], &dev).unwrap();
        // candle's backward: the op's gradient comes back and candle adds it up.
        let by_candle = loss(&w, &x).backward().unwrap().get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let ours = backward(&loss(&w, &x)).unwrap();
        let ours = ours.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // d/dw (x*w + w*x) = 2x, from both paths.
        assert_eq!(by_candle, vec![3.0, -4.0, 0.5]);
        assert_eq!(ours, by_candle);
    }

    #[test]
    fn a_panicking_backward_leaves_nothing_collecting() {
        let caught = std::panic::catch_unwind(|| {
            let _collecting = Collecting::start();
            panic!("an op's backward panics");
        });
        assert!(caught.is_err());
        let v = Var::new(&[1f32], &Device::Cpu).unwrap();
        let g = Tensor::new(&[2f32], &Device::Cpu).unwrap();
        assert!(hand_over(v.as_tensor(), g).is_some(), "a list was left collecting after the panic");
    }

    #[test]
    fn nothing_is_kept_outside_backward_or_for_non_variables() {
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let v = Var::new(&[1f32], &Device::Cpu).unwrap();
        assert!(hand_over(v.as_tensor(), t.clone()).is_some());
        let outer = HANDED.replace(Some(Vec::new()));
        assert!(hand_over(&t, t.clone()).is_some());
        assert!(hand_over(v.as_tensor(), t.clone()).is_none());
        let kept = HANDED.replace(outer).unwrap();
        assert_eq!(kept.len(), 1);
    }
}
