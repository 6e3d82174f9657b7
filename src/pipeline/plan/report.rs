//! The plain-text report of `wgdit plan`.

use super::RunPlan;

impl RunPlan {
    /// A plain-text report.
    pub fn table(&self) -> String {
        let g = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        let mut s = format!(
            "{} ({}) {}x{}{}, {} steps{}, {} weights, --qkv {}: {} image + {} text tokens per pass\n",
            self.model,
            self.pipeline,
            self.width,
            self.height,
            match self.references.len() {
                0 => String::new(),
                n => format!(" with {n} reference{}", if n > 1 { "s" } else { "" }),
            },
            self.steps,
            if self.cfg { ", true CFG" } else { "" },
            self.weights,
            self.mode,
            self.image_tokens,
            self.text_tokens
        );
        s += &format!("DiT weights on the GPU: {} (file {})\n", g(self.weight_bytes), g(self.file_weight_bytes));
        for (d, b) in &self.by_dtype {
            s += &format!("  {d:<8} {:>5} tensors  {:>10}\n", b.tensors, g(b.bytes));
        }
        s += &format!(
            "  modulation + time embedding {} (released by precompute), {} blocks of up to {}, other {}\n",
            g(self.modulation_weight_bytes),
            self.blocks,
            g(self.block_bytes),
            g(self.other_weight_bytes)
        );
        s += &format!("minimum device memory per strategy (VAE weights {} included):\n", g(self.vae_weight_bytes));
        for st in &self.strategies {
            let held = if st.resident_blocks == self.blocks {
                "all blocks resident".to_string()
            } else {
                format!("{} of {} blocks resident", st.resident_blocks, self.blocks)
            };
            s += &format!(
                "  {:<11} {:<26} peak {:>10}  weights resident {:>10}  streamed {:>10}/step\n",
                st.modulation.name(),
                held,
                g(st.peak_bytes),
                g(st.resident_bytes),
                g(st.streamed_bytes_per_step)
            );
        }
        s += &format!(
            "chosen: modulation {}, {} of {} blocks resident ({} streamed per step); phases:\n",
            self.modulation.name(),
            self.resident_blocks,
            self.blocks,
            g(self.streamed_bytes_per_step)
        );
        for p in &self.phases {
            s += &format!("  {:<52} {:>10}\n", p.phase, g(p.peak_bytes));
        }
        s += &format!(
            "  (denoising = DiT weights {} + activations {} + modulation vectors {} + VAE weights {})\n",
            g(self.resident_bytes),
            g(self.activation_bytes),
            g(self.modulation_vector_bytes),
            g(self.vae_weight_bytes)
        );
        s += &match self.budget_bytes {
            None => format!(
                "peak {}; no budget given (--vram-budget or WGDIT_VRAM_BUDGET), so nothing is checked; the least any strategy needs is {}\n",
                g(self.peak_bytes),
                g(self.minimum_bytes)
            ),
            Some(b) if self.fits => format!("fits {}: peak {}\n", g(b), g(self.peak_bytes)),
            Some(b) => format!(
                "does NOT fit {}: the least any strategy needs is {} (a smaller --weights type, size or fewer references)\n",
                g(b),
                g(self.minimum_bytes)
            ),
        };
        if let Some(t) = &self.train {
            s += &format!(
                "LoRA training, rank {} ({} params), checkpointing: weights {} + activations {} + LoRA/grad/AdamW {}; {} = {}{}\n",
                t.rank,
                t.lora_parameters,
                g(t.weight_bytes),
                g(t.activation_bytes),
                g(t.lora_state_bytes),
                if t.resident_blocks == t.blocks {
                    "every block resident".to_string()
                } else {
                    format!(
                        "{} of {} blocks resident, {} streamed per step",
                        t.resident_blocks,
                        t.blocks,
                        g(t.streamed_bytes_per_step)
                    )
                },
                g(t.peak_bytes),
                match (self.budget_bytes, t.fits) {
                    (None, _) => String::new(),
                    (Some(_), true) => " (fits)".into(),
                    (Some(_), false) => " (does NOT fit)".into(),
                }
            );
        }
        s
    }
}
