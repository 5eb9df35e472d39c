//! Parameter counts and names of the built ELF modules against spec §1.4–1.5.

use elf_model::backend::Cpu;
use elf_model::dims::{ElfDims, T5_VOCAB};
use elf_model::elf::Elf;
use elf_model::weights::param_infos;

fn count(preset: &str) -> usize {
    let dims = ElfDims::from_preset(preset, T5_VOCAB, 8).unwrap();
    Elf::<Cpu>::init(&dims, 0, &Default::default()).param_count()
}

#[test]
fn presets_have_the_spec_parameter_counts() {
    // spec §1.5, V = 32100, counted from the built modules.
    assert_eq!(count("ELF-B"), 104_579_940);
}

#[test]
#[ignore = "builds 1 GB of parameters; run with --ignored"]
fn large_presets_have_the_spec_parameter_counts() {
    assert_eq!(count("ELF-M"), 342_540_036);
    assert_eq!(count("ELF-L"), 652_103_332);
}

#[test]
fn parameter_names_are_the_flax_tree() {
    let dims = ElfDims::from_preset("ELF-T", 100, 8).unwrap();
    let m = Elf::<Cpu>::init(&dims, 0, &Default::default());
    let names: Vec<String> = param_infos(&m)
        .into_iter()
        .map(|p| format!("{} {:?}", p.name, p.shape))
        .collect();
    let h = 64;
    let mut expected = vec![
        "self_cond_proj/kernel [1024, 512]".to_string(),
        "self_cond_proj/bias [512]".into(),
        "text_proj/proj1/kernel [512, 128]".into(),
        "text_proj/proj2/kernel [128, 64]".into(),
        "text_proj/proj2/bias [64]".into(),
        format!("mode_tokens [1, 4, {h}]"),
        format!("t_embedder/mlp_0/kernel [256, {h}]"),
        format!("t_embedder/mlp_0/bias [{h}]"),
        format!("t_embedder/mlp_2/kernel [{h}, {h}]"),
        format!("t_embedder/mlp_2/bias [{h}]"),
        format!("t_emb_tokens [1, 4, {h}]"),
        format!("self_cond_cfg_embedder/mlp_0/kernel [256, {h}]"),
        format!("self_cond_cfg_embedder/mlp_0/bias [{h}]"),
        format!("self_cond_cfg_embedder/mlp_2/kernel [{h}, {h}]"),
        format!("self_cond_cfg_embedder/mlp_2/bias [{h}]"),
        format!("self_cond_cfg_tokens [1, 4, {h}]"),
    ];
    for i in 0..2 {
        expected.extend([
            format!("blocks_{i}/norm1/weight [{h}]"),
            format!("blocks_{i}/attn/qkv/kernel [{h}, {}]", 3 * h),
            format!("blocks_{i}/attn/qkv/bias [{}]", 3 * h),
            format!("blocks_{i}/attn/q_norm/weight [16]"),
            format!("blocks_{i}/attn/k_norm/weight [16]"),
            format!("blocks_{i}/attn/proj/kernel [{h}, {h}]"),
            format!("blocks_{i}/attn/proj/bias [{h}]"),
            format!("blocks_{i}/norm2/weight [{h}]"),
            format!("blocks_{i}/mlp/w12/kernel [{h}, 340]"),
            format!("blocks_{i}/mlp/w12/bias [340]"),
            format!("blocks_{i}/mlp/w3/kernel [170, {h}]"),
            format!("blocks_{i}/mlp/w3/bias [{h}]"),
        ]);
    }
    expected.extend([
        format!("proj_kernel [{h}, 512]"),
        "proj_bias [512]".into(),
        "unembed_kernel [512, 100]".into(),
        "unembed_bias [100]".into(),
        format!("final_layer/norm_final/weight [{h}]"),
        format!("final_layer/linear/kernel [{h}, 512]"),
        "final_layer/linear/bias [512]".into(),
    ]);
    assert_eq!(names, expected);
}
