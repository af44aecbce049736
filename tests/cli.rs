//! The command line as a user meets it: help, the models table, bad input, threads.

use std::process::{Command, Output};

fn candle_mpi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_candle-mpi")).args(args).output().expect("run candle-mpi")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_reads_like_a_manual() {
    let o = candle_mpi(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("models") && out.contains("--threads") && out.contains("mpirun"), "{out}");
    let o = candle_mpi(&["models", "--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("--image-size") && out.contains("multiply-adds"), "{out}");
}

#[test]
fn models_json_lists_counts_and_costs() {
    let o = candle_mpi(&["models", "--models", "googlenet,small", "--image-size", "64", "--classes", "10", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["model"], "googlenet");
    assert_eq!(rows[0]["image_size"], 64);
    // 6,624,904 at 1000 classes, less 990 classes of the 1024-input classifier.
    assert_eq!(rows[0]["parameters"], 6_624_904 - 990 * 1025);
    assert!(rows[0]["gmacs_per_image"].as_f64().unwrap() > 0.1);
}

#[test]
fn models_table_at_224_compares_with_torchvision() {
    let o = candle_mpi(&["models", "--models", "alexnet,resnet50"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let alexnet = out.lines().find(|l| l.starts_with("alexnet")).expect(&out);
    assert!(alexnet.contains("61,100,840") && alexnet.contains("0.714"), "{alexnet}");
    let resnet = out.lines().find(|l| l.starts_with("resnet50")).expect(&out);
    assert!(resnet.contains("25,557,032") && resnet.contains("4.089"), "{resnet}");
}

#[test]
fn unknown_model_names_the_flag_value_and_choices() {
    let o = candle_mpi(&["models", "--models", "lenet"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--models") && e.contains("lenet") && e.contains("resnet50"), "{e}");
}

#[test]
fn image_too_small_names_the_flag_value_and_minimum() {
    let o = candle_mpi(&["models", "--models", "vgg16", "--image-size", "16"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--image-size 16") && e.contains("vgg16") && e.contains("32"), "{e}");
}

#[test]
fn zero_classes_is_refused() {
    let o = candle_mpi(&["models", "--models", "small", "--classes", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--classes 0"), "{}", stderr(&o));
}

#[test]
fn zero_threads_is_refused() {
    let o = candle_mpi(&["models", "--models", "small", "--threads", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--threads 0"), "{}", stderr(&o));
}
