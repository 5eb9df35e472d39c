//! `elf bench data`: collated tokens/s for the OWT shape from a prepared Arrow dataset on disk,
//! on one core, against 20x the token rate an H200 consumes for ELF-B.

use std::sync::Arc;
use std::time::Instant;

use elf_dataset::collate::Collator;
use elf_dataset::open_dataset;
use elf_dataset::prepare::{OutFormat, prepare};
use elf_dataset::tokenizer::TextTokenizer;
use elf_shared::config::Config;
use elf_shared::seed::{Purpose, Stream};

use crate::out;

pub fn bench_data(rows: u64, batches: u64, h200: f64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (l, b) = (1024usize, 32u64);
    // A JSONL of space-separated numbers tokenises to long sequences; prepare then reads them.
    let src = dir.path().join("src.jsonl");
    let mut text = String::new();
    let mut rng = Stream::new(0, Purpose::DataOrder, 7, 0);
    for _ in 0..rows {
        let words: Vec<String> = (0..700).map(|_| format!("w{}", rng.below(5000))).collect();
        text.push_str(&serde_json::json!({"text": words.join(" ")}).to_string());
        text.push('\n');
    }
    std::fs::write(&src, text)?;
    let tok = Arc::new(TextTokenizer::t5());
    let out_dir = dir.path().join("prepared");
    prepare(
        &src,
        &out_dir,
        OutFormat::Arrow,
        5_000,
        &tok,
        &mut |_, _, _| {},
    )?;
    let data = open_dataset(&out_dir.display().to_string(), &tok)?;
    let c = Config {
        max_length: l,
        global_batch_size: b as usize,
        ..Config::default()
    };
    let collator = Collator::from_config(&c, tok.vocab_size());
    let plan = elf_shared::plan::Plan::new(data.len(), b, 0)?;
    // One core: this thread only.
    let start = Instant::now();
    let mut tokens = 0u64;
    let mut ids = Vec::with_capacity(b as usize * l);
    for step in 0..batches {
        ids.clear();
        for p in 0..b {
            let row = data.row(plan.row(step, p))?;
            let col = collator.collate(&row).map_err(anyhow::Error::msg)?;
            let mut m = vec![0f32; l];
            collator.loss_mask(&col, &mut m);
            ids.extend_from_slice(&col.ids);
        }
        tokens += (b as usize * l) as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = tokens as f64 / secs;
    out::line(format!(
        "bench data L={l} B={b}: {rate:.0} collated tokens/s on one core; target 20 x {h200:.0} = {:.0}; ratio = {:.2} (target >= 1)",
        20.0 * h200,
        rate / (20.0 * h200)
    ));
    Ok(())
}
