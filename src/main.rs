//! The `wgdit` command line. Thin: parse, call the library, print; errors become exit code 1.

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;
use wgdit::gpu::{self, Backend, GpuOptions};

#[derive(Parser)]
#[command(name = "wgdit", version, about = "Qwen-Image DiT inference and LoRA training on any GPU via wgpu")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Adapter selection shared by every GPU command.
#[derive(Args, Clone)]
struct GpuArgs {
    /// Graphics API: vulkan, metal, dx12 or gl (env WGDIT_BACKEND).
    #[arg(long, global = true)]
    backend: Option<Backend>,
    /// Adapter index (from `wgdit devices`) or name substring (env WGDIT_ADAPTER).
    #[arg(long, global = true)]
    adapter: Option<String>,
}

impl GpuArgs {
    fn options(&self) -> GpuOptions {
        GpuOptions { backend: self.backend, adapter: self.adapter.clone() }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// List every adapter: backend, type, name, driver, optional features and key limits.
    Devices {
        #[command(flatten)]
        gpu: GpuArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Convert a checkpoint or LoRA between the standard and merged q/k/v layouts (exact, streaming).
    Convert(ConvertArgs),
}

/// `wgdit convert`: see docs/convert.md.
#[derive(Args)]
struct ConvertArgs {
    /// Checkpoint file, diffusers model folder, or LoRA file.
    #[arg(long)]
    input: std::path::PathBuf,
    /// Output file, or folder (for a folder input or with --shard-size).
    #[arg(long)]
    output: std::path::PathBuf,
    /// Target layout: merged (attn.to_qkv, attn.add_qkv_proj) or standard (to_q/to_k/to_v, ...).
    #[arg(long, value_parser = ["merged", "standard"])]
    to: String,
    /// Output key format: diffusers (default for LoRAs), comfyui, diffsynth, kohya (LoRAs only).
    #[arg(long)]
    format: Option<String>,
    /// Output dtype: keep, bf16, f16 or f32.
    #[arg(long, default_value = "keep")]
    dtype: String,
    /// Maximum shard size, e.g. 5GB (a folder input defaults to 5GB).
    #[arg(long)]
    shard_size: Option<String>,
    /// List what would be merged, split and copied; write nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> wgdit::Result<()> {
    match cli.cmd {
        Cmd::Devices { gpu, json } => devices(&gpu.options(), json),
        Cmd::Convert(args) => convert(args),
    }
}

fn convert(a: ConvertArgs) -> wgdit::Result<()> {
    use wgdit::convert::{self, ConvertOptions, DtypeChoice, Format, Target};
    let opts = ConvertOptions {
        input: a.input,
        output: a.output,
        to: if a.to == "merged" { Target::Merged } else { Target::Standard },
        format: a.format.as_deref().map(Format::parse).transpose()?,
        dtype: DtypeChoice::parse(&a.dtype)?,
        shard_size: a.shard_size.as_deref().map(convert::parse_size).transpose()?,
        dry_run: a.dry_run,
        progress: true,
    };
    println!("{}", convert::convert(&opts)?);
    Ok(())
}

fn devices(opts: &GpuOptions, json: bool) -> wgdit::Result<()> {
    let opts = opts.clone().with_env()?;
    let list = gpu::list_adapters(opts.backend);
    if json {
        println!("{}", serde_json::to_string_pretty(&list).expect("cannot fail: plain data"));
        return Ok(());
    }
    if list.is_empty() {
        return Err(wgdit::Error::NoAdapter(
            "no adapters found; install a GPU driver, or lavapipe: apt-get install mesa-vulkan-drivers libvulkan1"
                .into(),
        ));
    }
    for a in &list {
        let c = &a.caps;
        let l = &a.limits;
        let mib = |b: u64| b as f64 / 1048576.0;
        println!("[{}] {} ({}, {}) driver: {} {}", a.index, a.name, a.backend, a.device_type, a.driver, a.driver_info);
        println!(
            "    features: shader_f16={} subgroup={} timestamp_query={} timestamp_inside_passes={} cooperative_matrix={}",
            c.shader_f16, c.subgroup, c.timestamp_query, c.timestamp_inside_passes, c.cooperative_matrix
        );
        println!(
            "    limits: storage binding {:.0} MiB, buffer {:.0} MiB, workgroup storage {} B, {} invocations/workgroup, {} workgroups/dim, {} storage buffers/stage",
            mib(l.max_storage_binding), mib(l.max_buffer), l.max_workgroup_storage,
            l.max_invocations_per_workgroup, l.max_workgroups_per_dim, l.max_storage_buffers_per_stage
        );
    }
    Ok(())
}
