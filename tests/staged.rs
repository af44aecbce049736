//! The backward pass stage by stage (`train::staged`) against candle's one
//! call, for every network: the same loss and every parameter's gradient
//! bit for bit, each stage's gradients handed over last stage first, and
//! every parameter's gradient in exactly one stage.

use candle_core::{DType, Device, Tensor};
use candle_mpi::model::network::ModelConfig;
use candle_mpi::model::params::ParamStore;
use candle_mpi::model::ModelKind;
use candle_mpi::train::staged;

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

fn check(kind: ModelKind, image: usize, min_stages: usize) {
    let cfg = ModelConfig { dropout: Some(0.0), ..ModelConfig::new(10, image) };
    let store = ParamStore::new(7);
    let net = kind.build(&cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
    assert!(net.stages() >= min_stages, "{kind}: {} stages", net.stages());
    let x = Tensor::randn(0f32, 1.0, (2, 3, image, image), &Device::Cpu).unwrap();
    let y = Tensor::new(&[3u32, 8], &Device::Cpu).unwrap();
    let loss_of = |logits: &Tensor| candle_nn::loss::cross_entropy(logits, &y);

    let one_loss = loss_of(&net.forward_t(&x, true).unwrap()).unwrap();
    // The trainer's one-call backward (parameter gradients as our ops hand
    // them over, as the staged backward takes them too).
    let one = candle_mpi::ops::param_grads::backward(&one_loss).unwrap();

    let mut handed = vec![];
    let mut stores = vec![];
    let loss = staged::forward_backward(net.as_ref(), &x, true, loss_of, |stage, store| {
        handed.push(stage);
        stores.push(store);
        Ok(())
    })
    .unwrap();
    stores.reverse();
    let want: Vec<usize> = (0..net.stages()).rev().collect();
    assert_eq!(handed, want, "{kind}: stages handed over last first");
    assert_eq!(bits(&loss), bits(&one_loss), "{kind}: loss");

    let params = store.trainable_sorted();
    // Where the exchange's overlap plan expects each gradient: found in evaluation mode, on one blank image.
    let expected = staged::stage_of_params(net.as_ref(), &params, (1, 3, image, image)).unwrap();
    for (i, (name, var)) in params.iter().enumerate() {
        let holders: Vec<usize> = (0..stores.len()).filter(|&s| stores[s].get(var.as_tensor()).is_some()).collect();
        match expected[i] {
            Some(stage) => assert_eq!(holders, vec![stage], "{kind}: {name}'s gradient"),
            None => assert!(holders.is_empty(), "{kind}: {name} has a gradient in {holders:?} but none was expected"),
        }
    }
    for (name, var) in &params {
        let (a, b) = (one.get(var.as_tensor()), stores.iter().find_map(|s| s.get(var.as_tensor())));
        match (a, b) {
            (Some(a), Some(b)) => assert!(bits(a) == bits(b), "{kind}: {name}'s gradient differs"),
            (None, None) => {}
            _ => panic!("{kind}: {name} has a gradient in one pass only"),
        }
    }
}

#[test]
fn small_stage_by_stage_is_bit_identical() {
    check(ModelKind::Small, 8, 3);
}

#[test]
fn alexnet_stage_by_stage_is_bit_identical() {
    check(ModelKind::Alexnet, 32, 8);
}

#[test]
fn resnet50_stage_by_stage_is_bit_identical() {
    check(ModelKind::Resnet50, 32, 18);
}

#[test]
fn vgg16_stage_by_stage_is_bit_identical() {
    check(ModelKind::Vgg16, 32, 21);
}

#[test]
fn googlenet_is_one_stage_and_the_same() {
    check(ModelKind::Googlenet, 32, 1);
}
