//! The `wgdit` command line. Thin: parse, call the library, print; errors become exit code 1.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wgdit::gpu::{self, Backend, GpuOptions};
use wgdit::models::qwen_image::lora::parse_lora_arg;
use wgdit::models::qwen_image::{DitConfig, QkvMode};
use wgdit::pipeline::forward::{run_forward, ForwardTask};

#[derive(Parser)]
#[command(name = "wgdit", version, about = "Qwen-Image DiT inference and LoRA training on any GPU via wgpu")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum SamplingArg {
    Diffsynth,
    Uniform,
}

/// `--qkv` of forward and train.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum QkvArg {
    Standard,
    Merged,
    Fused,
}

impl QkvArg {
    fn mode(self) -> QkvMode {
        match self {
            QkvArg::Standard => QkvMode::Standard,
            QkvArg::Merged => QkvMode::Merged,
            QkvArg::Fused => QkvMode::Fused,
        }
    }
}

/// `bench dispatches --qkv`: one mode or all three.
/// `--modulation`: where the modulation vectors of each step come from.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum ModulationArg {
    /// Computed for every step of the schedule before the loop; the modulation weights (a third
    /// of the model) are released before the blocks' are uploaded.
    Precompute,
    /// Computed in every forward from the timestep (the modulation weights stay on the GPU).
    Inline,
}

impl ModulationArg {
    fn modulation(self) -> wgdit::models::qwen_image::Modulation {
        use wgdit::models::qwen_image::Modulation;
        match self {
            ModulationArg::Precompute => Modulation::Precompute,
            ModulationArg::Inline => Modulation::Inline,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum BenchQkv {
    Standard,
    Merged,
    Fused,
    All,
}

/// LoRA / checkpoint key formats (`--format`), with the other tools' names as aliases.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum FormatArg {
    #[value(alias = "peft")]
    Diffusers,
    #[value(alias = "comfy")]
    Comfyui,
    Diffsynth,
    #[value(alias = "musubi")]
    Kohya,
}

impl FormatArg {
    fn format(self) -> wgdit::convert::Format {
        use wgdit::convert::Format;
        match self {
            FormatArg::Diffusers => Format::Diffusers,
            FormatArg::Comfyui => Format::ComfyUI,
            FormatArg::Diffsynth => Format::DiffSynth,
            FormatArg::Kohya => Format::Kohya,
        }
    }
}

/// `convert --dtype`.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum DtypeArg {
    Keep,
    #[value(alias = "bfloat16")]
    Bf16,
    #[value(aliases = ["fp16", "float16"])]
    F16,
    #[value(aliases = ["fp32", "float32"])]
    F32,
}

impl DtypeArg {
    fn choice(self) -> wgdit::convert::DtypeChoice {
        use wgdit::convert::DtypeChoice;
        match self {
            DtypeArg::Keep => DtypeChoice::Keep,
            DtypeArg::Bf16 => DtypeChoice::To(wgdit::tensor::DType::BF16),
            DtypeArg::F16 => DtypeChoice::To(wgdit::tensor::DType::F16),
            DtypeArg::F32 => DtypeChoice::To(wgdit::tensor::DType::F32),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum ConvertTo {
    Merged,
    Standard,
}

/// `--backend` (the environment variable WGDIT_BACKEND takes the same names).
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum BackendArg {
    #[value(alias = "vk")]
    Vulkan,
    #[value(alias = "mtl")]
    Metal,
    #[value(alias = "d3d12")]
    Dx12,
    #[value(aliases = ["gles", "opengl"])]
    Gl,
}

impl BackendArg {
    fn backend(self) -> Backend {
        match self {
            BackendArg::Vulkan => Backend::Vulkan,
            BackendArg::Metal => Backend::Metal,
            BackendArg::Dx12 => Backend::Dx12,
            BackendArg::Gl => Backend::Gl,
        }
    }
}

/// `--preset`: the real models (transformer config and pipeline class), for counting and planning
/// without weights.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Preset {
    /// Qwen-Image: QwenImagePipeline (text to image).
    QwenImage,
    /// Qwen-Image-Edit: QwenImageEditPipeline (one reference).
    QwenImageEdit,
    /// Qwen-Image-Edit-2509: QwenImageEditPlusPipeline (one reference in `bench generate`).
    #[value(name = "qwen-image-edit-2509")]
    QwenImageEdit2509,
    /// Qwen-Image-Edit-2511: QwenImageEditPlusPipeline with zero_cond_t.
    #[value(name = "qwen-image-edit-2511")]
    QwenImageEdit2511,
    /// Qwen-Image-2512: QwenImagePipeline.
    #[value(name = "qwen-image-2512")]
    QwenImage2512,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Preset::QwenImage => "qwen-image",
            Preset::QwenImageEdit => "qwen-image-edit",
            Preset::QwenImageEdit2509 => "qwen-image-edit-2509",
            Preset::QwenImageEdit2511 => "qwen-image-edit-2511",
            Preset::QwenImage2512 => "qwen-image-2512",
        }
    }
    fn dit(self) -> wgdit::Result<DitConfig> {
        DitConfig::preset(self.name())
    }
    fn class(self) -> wgdit::pipeline::folder::PipelineClass {
        use wgdit::pipeline::folder::PipelineClass;
        match self {
            Preset::QwenImage | Preset::QwenImage2512 => PipelineClass::TextToImage,
            Preset::QwenImageEdit => PipelineClass::Edit,
            Preset::QwenImageEdit2509 | Preset::QwenImageEdit2511 => PipelineClass::EditPlus,
        }
    }
}

/// Adapter selection shared by every GPU command.
#[derive(Args, Clone)]
struct GpuArgs {
    /// Graphics API (env WGDIT_BACKEND).
    #[arg(long, global = true, value_enum, ignore_case = true)]
    backend: Option<BackendArg>,
    /// Adapter index (from `wgdit devices`) or name substring (env WGDIT_ADAPTER).
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Kernel family of the GEMMs and attention: auto, portable (f32 SIMT), f16 (tile programs
    /// on f16 SIMT), coop (cooperative matrices), coop-emulated (runs anywhere) (env WGDIT_KERNELS).
    #[arg(long, global = true, value_enum, ignore_case = true)]
    kernels: Option<KernelsArg>,
    /// Operand precision of the GEMMs and attention: auto (mixed on GPUs with cooperative
    /// matrices, f32 elsewhere), f32, mixed (f16 operands, f32 accumulation)
    /// (env WGDIT_PRECISION).
    #[arg(long, global = true, value_enum, ignore_case = true)]
    precision: Option<PrecisionArg>,
    /// Build shaders without wgpu's per-access bounds checks (env WGDIT_TRUSTED_SHADERS=1); the
    /// shaders are wgdit's own, validated by its tests. Results are identical; it can be faster.
    #[arg(long, global = true)]
    trusted_shaders: bool,
}

/// `--kernels`.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum KernelsArg {
    Auto,
    Portable,
    F16,
    Coop,
    CoopEmulated,
}

/// `--precision`.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum PrecisionArg {
    Auto,
    F32,
    Mixed,
}

impl GpuArgs {
    fn options(&self) -> GpuOptions {
        use wgdit::gpu::{Family, Precision};
        let kernels = self.kernels.and_then(|k| match k {
            KernelsArg::Auto => None,
            KernelsArg::Portable => Some(Family::Portable),
            KernelsArg::F16 => Some(Family::F16),
            KernelsArg::Coop => Some(Family::Coop),
            KernelsArg::CoopEmulated => Some(Family::CoopEmulated),
        });
        let precision = self.precision.and_then(|p| match p {
            PrecisionArg::Auto => None,
            PrecisionArg::F32 => Some(Precision::F32),
            PrecisionArg::Mixed => Some(Precision::Mixed),
        });
        GpuOptions {
            backend: self.backend.map(BackendArg::backend),
            adapter: self.adapter.clone(),
            kernels,
            precision,
            trusted_shaders: self.trusted_shaders,
        }
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
    /// Run the DiT once on an inputs file and write `output` (see README: CLI contract).
    Forward(ForwardArgs),
    /// Benchmarks: `bench dispatches` counts (and times) the DiT graph per execution mode,
    /// `bench generate` times a picture's phases, `bench kernels` the GEMM and attention kernels.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Fine-tune a LoRA on cached latents and text embeddings (see docs/training.md).
    Train(TrainArgs),
    /// Pictures and captions (a DiffSynth metadata.csv folder or a kohya folder tree) → the cached
    /// latents and embeddings `train --data` reads (docs/training.md, "From pictures").
    Cache(CacheArgs),
    /// Convert a checkpoint or LoRA between the standard and merged q/k/v layouts (exact, streaming).
    Convert(ConvertArgs),
    /// Quantize a checkpoint to a GGUF file (ComfyUI-GGUF's layout) or a ComfyUI fp8 safetensors
    /// file, tensor by tensor (see docs/quantize.md).
    Quantize(QuantizeArgs),
    /// Make a picture (text to image) or edit pictures with a diffusers Qwen-Image pipeline folder.
    Generate(GenerateArgs),
    /// The Qwen-Image VAE: `vae encode` (PNG → latents), `vae decode` (latents → PNG or
    /// safetensors), `vae plan` (planned memory and dispatches at a size, no weights).
    Vae {
        #[command(subcommand)]
        what: VaeCmd,
    },
    /// Print the token ids of a prompt with a pipeline folder's Qwen2 tokenizer (optionally inside
    /// a pipeline's prompt template).
    Tokenize(TokenizeArgs),
    /// Encode a prompt with a pipeline folder's text encoder into the embeddings file that
    /// `generate --prompt-embeds` reads (diffusers' encode_prompt).
    EncodePrompt(EncodePromptArgs),
    /// The device memory a `generate` run needs (weights by dtype, what stays resident, activation
    /// peak, streaming per step) and whether it fits a budget; no GPU, no weights for presets.
    Plan(PlanArgs),
}

/// `wgdit plan` (docs/plan.md).
#[derive(Args)]
#[command(group(clap::ArgGroup::new("plan_source").required(true).args(["model", "preset"])))]
struct PlanArgs {
    /// A pipeline folder, a diffusers transformer folder or a single checkpoint file (then
    /// --config): bytes of its own tensors.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The transformer's config.json (with --model as a single file).
    #[arg(long, requires = "model")]
    config: Option<PathBuf>,
    /// A real model's config, with every tensor in the dtype of a file quantized to --weights.
    #[arg(long, value_enum, requires = "weights")]
    preset: Option<Preset>,
    /// With --preset: f32, bf16, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, f8_e4m3, f8_e5m2.
    #[arg(long, conflicts_with = "model")]
    weights: Option<String>,
    /// With --preset: `wgdit quantize`'s rule, tensors whose name contains PATTERN in TYPE (default f16).
    #[arg(long = "keep", value_name = "PATTERN[=TYPE]", requires = "preset")]
    keep: Vec<String>,
    #[arg(long, default_value_t = 1024)]
    width: u32,
    #[arg(long, default_value_t = 1024)]
    height: u32,
    /// Reference images of an edit (each the output size); Edit-Plus takes several. 0: the
    /// pipeline's default (none for text to image, one for the Edit pipelines).
    #[arg(long, default_value_t = 0)]
    images: usize,
    /// Prompt tokens per pass (the negative prompt as long).
    #[arg(long, default_value_t = 128)]
    text_tokens: usize,
    #[arg(long, default_value_t = wgdit::pipeline::scheduler::DEFAULT_NUM_INFERENCE_STEPS)]
    steps: usize,
    /// Plan one DiT pass per step (no negative prompt) instead of true CFG's two.
    #[arg(long)]
    no_cfg: bool,
    #[arg(long, value_enum, default_value = "fused")]
    qkv: QkvArg,
    /// Device memory to fit (e.g. 16G, 12GiB; env WGDIT_VRAM_BUDGET); without one nothing is checked.
    #[arg(long, value_name = "SIZE", value_parser = parse_budget)]
    vram_budget: Option<u64>,
    /// Also plan a LoRA training step of this rank (DiffSynth targets, checkpointing on).
    #[arg(long)]
    train_rank: Option<usize>,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum TemplateArg {
    T2i,
    Edit,
    EditPlus,
}

#[derive(Args)]
struct TokenizeArgs {
    /// A pipeline folder (its tokenizer/ or processor/), or a tokenizer folder.
    #[arg(long)]
    model: PathBuf,
    /// The text to tokenize.
    #[arg(long)]
    prompt: String,
    /// Fill the prompt into this pipeline's template first (image placeholders unexpanded: one
    /// `<|image_pad|>` per image).
    #[arg(long, value_enum)]
    template: Option<TemplateArg>,
    /// Condition images of the Edit-Plus template (`Picture i:` prefixes).
    #[arg(long, default_value_t = 1)]
    images: usize,
    /// Print JSON (ids, tokens, text, drop) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum VaeCmd {
    /// `latents` [1, z, 1, h, w] f32 = vae.encode(2·(pixels/255) − 1).latent_dist.mode().
    Encode(VaeEncodeArgs),
    /// `image` [1, 3, H, W] f32 = vae.decode(latents).sample[:, :, 0] (.safetensors), or an RGB PNG.
    Decode(VaeDecodeArgs),
    /// Planned activation peak, largest activation and dispatches of encode and decode at a size.
    Plan(VaePlanArgs),
}

#[derive(Args)]
struct VaeEncodeArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// A VAE folder (config.json + diffusion_pytorch_model.safetensors) or a pipeline folder with vae/.
    #[arg(long)]
    model: PathBuf,
    /// 8-bit RGB PNG; width and height must be multiples of the spatial factor (no resizing).
    #[arg(long)]
    image: PathBuf,
    /// Latents file (.safetensors).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    tiling: VaeTilingArgs,
    /// Write the output even when it holds NaN or Inf values (refused by default).
    #[arg(long)]
    allow_nonfinite: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum TilingArg {
    /// Tile only when the untiled plan would not fit (an activation above a binding, or the budget).
    Auto,
    On,
    Off,
}

#[derive(Args)]
struct VaeDecodeArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// A VAE folder or a pipeline folder with vae/.
    #[arg(long)]
    model: PathBuf,
    /// Raw latents (.safetensors, tensor `latents` [1, z, 1, h, w] f32; no mean/std applied).
    #[arg(long)]
    latents: PathBuf,
    /// .png (8-bit RGB) or .safetensors (`image` [1, 3, H, W] f32).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    tiling: VaeTilingArgs,
    /// Write the output even when it holds NaN or Inf values (refused by default).
    #[arg(long)]
    allow_nonfinite: bool,
}

/// `--vae-tiling` and its tiles, shared by encode and decode.
#[derive(Args)]
struct VaeTilingArgs {
    /// Spatial tiling as diffusers' enable_tiling (a tiled decode is not clamped, as in diffusers).
    #[arg(long, value_enum, default_value_t = TilingArg::Auto)]
    vae_tiling: TilingArg,
    /// Tile size in pixels, `N` or `HxW` (diffusers' tile_sample_min_height/width).
    #[arg(long, default_value = "256", value_parser = parse_hw)]
    vae_tile: (usize, usize),
    /// Tile stride in pixels, `N` or `HxW` (diffusers' tile_sample_stride_height/width).
    #[arg(long, default_value = "192", value_parser = parse_hw)]
    vae_tile_stride: (usize, usize),
    /// `auto` tiles when the untiled plan's activation peak exceeds this many MiB.
    #[arg(long, default_value_t = 8192)]
    vae_budget_mib: u64,
}

impl VaeTilingArgs {
    fn tiling(&self) -> wgdit::Result<wgdit::models::qwen_image_vae::Tiling> {
        use wgdit::models::qwen_image_vae::{TileSpec, Tiling};
        let (t, s) = (self.vae_tile, self.vae_tile_stride);
        let spec = TileSpec { min_h: t.0, min_w: t.1, stride_h: s.0, stride_w: s.1 };
        if spec.stride_h > spec.min_h || spec.stride_w > spec.min_w {
            return Err(wgdit::Error::input(
                "--vae-tile-stride must not exceed --vae-tile (tiles must overlap or touch)",
            ));
        }
        Ok(match self.vae_tiling {
            TilingArg::Off => Tiling::Off,
            TilingArg::On => Tiling::On(spec),
            TilingArg::Auto => Tiling::Auto { spec, budget: self.vae_budget_mib << 20 },
        })
    }
}

#[derive(Args)]
struct VaePlanArgs {
    /// A VAE folder or pipeline folder whose config to use (default: the Qwen-Image VAE).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Image size in pixels, `N` or `HxW`.
    #[arg(long, value_parser = parse_hw)]
    size: (usize, usize),
    /// Bytes of one attention score chunk, in MiB.
    #[arg(long, default_value_t = 256)]
    scores_mib: u64,
}

/// `wgdit generate` (README: CLI contract).
#[derive(Args)]
#[command(group(clap::ArgGroup::new("prompt_source").required(true).args(["prompt", "prompt_embeds"])))]
struct GenerateArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// A diffusers pipeline folder: QwenImagePipeline (text to image), QwenImageEditPipeline or
    /// QwenImageEditPlusPipeline (Edit-2509/2511), with model_index.json, transformer/, vae/, scheduler/.
    #[arg(long)]
    model: PathBuf,
    /// The prompt, encoded with the folder's text_encoder/ and tokenizer (and, for the Edit
    /// pipelines, with the --image pictures through the vision tower).
    #[arg(long, conflicts_with = "prompt_embeds")]
    prompt: Option<String>,
    /// `prompt_embeds` [1, S, D] f32 + `prompt_embeds_mask` [1, S] (i64/i32), as diffusers' encode_prompt returns them.
    #[arg(long)]
    prompt_embeds: Option<PathBuf>,
    /// The negative prompt (true CFG runs when --true-cfg > 1 and a negative is given).
    #[arg(long, conflicts_with = "negative_prompt_embeds")]
    negative_prompt: Option<String>,
    /// Negative prompt embeddings (`prompt_embeds` or `negative_prompt_embeds` + mask).
    #[arg(long)]
    negative_prompt_embeds: Option<PathBuf>,
    /// A picture to edit (Edit pipelines; repeatable for Edit-2509/2511, each of its own size).
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// .png (with the settings in text chunks), .jpg, .webp (8-bit RGB) or .safetensors (`image` [1, 3, H, W] in [0, 1]).
    #[arg(long)]
    output: PathBuf,
    /// Output width in pixels (default: 1024 for text to image, from the references for edits).
    #[arg(long)]
    width: Option<u32>,
    /// Output height in pixels.
    #[arg(long)]
    height: Option<u32>,
    /// Denoising steps.
    #[arg(long, default_value_t = wgdit::pipeline::scheduler::DEFAULT_NUM_INFERENCE_STEPS)]
    steps: usize,
    /// Custom sigmas instead of linspace(1, 1/N, N), comma-separated (e.g. 1,0.75,0.5,0.25).
    #[arg(long, value_delimiter = ',')]
    sigmas: Option<Vec<f64>>,
    /// true_cfg_scale (diffusers' default 4.0); CFG runs only with a negative prompt.
    #[arg(long, default_value_t = 4.0)]
    true_cfg: f32,
    /// torch.Generator("cpu").manual_seed(S) noise: the image diffusers makes with that seed.
    #[arg(long, conflicts_with = "noise")]
    seed: Option<u64>,
    /// `noise` [1, 1, C, h, w] f32: exactly what diffusers' prepare_latents draws before packing.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// A LoRA file, optionally with a strength (`style.safetensors:0.8`); repeatable.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<String>,
    #[arg(long, value_enum, default_value = "fused")]
    qkv: QkvArg,
    /// A transformer other than the folder's transformer/: a GGUF file (city96/QuantStack
    /// Q8_0 … Q2_K), a ComfyUI fp8 or bf16 safetensors file, or a diffusers folder; its config is
    /// the one beside it, else the folder's transformer/config.json.
    #[arg(long, value_name = "PATH")]
    transformer: Option<PathBuf>,
    /// Modulation vectors: precomputed for the whole schedule before the loop, or inline.
    #[arg(long, value_enum, default_value = "precompute")]
    modulation: ModulationArg,
    /// Target area in pixels of the VAE reference images (diffusers: 1024·1024).
    #[arg(long, default_value_t = 1024 * 1024)]
    ref_area: u64,
    /// Target area in pixels of Edit-Plus's vision-encoder images (diffusers: 384·384).
    #[arg(long, default_value_t = 384 * 384)]
    condition_area: u64,
    /// Tile the VAE decode: auto (when the untiled plan would not fit), on or off.
    #[arg(long, value_enum, default_value_t = TilingArg::Auto)]
    vae_tiling: TilingArg,
    /// `auto` tiles when the untiled decode's planned peak exceeds this many MiB.
    #[arg(long, default_value_t = 8192)]
    vae_budget_mib: u64,
    /// Also write the final latents (before decoding): `latents` [1, C, 1, h, w].
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// Write the image and latents even when it holds NaN or Inf values (refused by default).
    #[arg(long)]
    allow_nonfinite: bool,
    #[command(flatten)]
    text: TextEncoderArgs,
    /// Device memory the DiT may use (weights, activations and what wgdit already holds), e.g.
    /// 8G: the transformer blocks that do not fit stream from the model file (docs/streaming.md).
    /// With --text-encoder-weights auto it also decides the text encoder's residency. Default:
    /// the adapter's memory less a margin (or WGDIT_VRAM_BUDGET).
    #[arg(long, value_name = "SIZE", value_parser = parse_budget)]
    vram_budget: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum ResidencyArg {
    /// Resident when the layers' weights fit half the free device memory, else streamed.
    Auto,
    /// Every layer's weights uploaded once.
    Resident,
    /// One layer's weights on the device at a time.
    Streamed,
}

#[derive(Args)]
struct TextEncoderArgs {
    /// Where the text encoder's layer weights live while it runs.
    #[arg(long, value_enum, default_value_t = ResidencyArg::Auto)]
    text_encoder_weights: ResidencyArg,
    /// A text encoder other than the folder's text_encoder/: a folder, or one safetensors file
    /// (e.g. ComfyUI's qwen_2.5_vl_7b.safetensors) with its config.json beside it, else Qwen2.5-VL-7B's.
    #[arg(long, value_name = "PATH")]
    text_encoder: Option<PathBuf>,
}

impl TextEncoderArgs {
    fn residency(&self) -> Option<wgdit::models::qwen2_5_vl::runtime::Residency> {
        use wgdit::models::qwen2_5_vl::runtime::Residency;
        match self.text_encoder_weights {
            ResidencyArg::Auto => None,
            ResidencyArg::Resident => Some(Residency::Resident),
            ResidencyArg::Streamed => Some(Residency::Streamed),
        }
    }
}

/// `wgdit encode-prompt` (README: CLI contract).
#[derive(Args)]
struct EncodePromptArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// A diffusers pipeline folder with text_encoder/ and tokenizer/ (processor/ for the Edit pipelines).
    #[arg(long)]
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// A picture to edit (the Edit pipelines: one; Edit-2509/2511: one or more), encoded with the prompt.
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// Target area of Edit v1's reference (its vision input), as in `generate`.
    #[arg(long, default_value_t = 1024 * 1024)]
    ref_area: u64,
    /// Target area of Edit-Plus's vision-encoder images, as in `generate`.
    #[arg(long, default_value_t = 384 * 384)]
    condition_area: u64,
    /// `prompt_embeds` [1, S, D] f32 + `prompt_embeds_mask` [1, S] i64 (what `generate --prompt-embeds` reads).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    text: TextEncoderArgs,
}

/// A byte size (`--vram-budget`): 800M, 16G, 1.5GiB.
fn parse_budget(s: &str) -> Result<u64, String> {
    wgdit::budget::parse_size(s).map_err(|e| e.to_string())
}

/// `wgdit cache` (docs/training.md).
#[derive(Args)]
struct CacheArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// A diffusers pipeline folder: text to image gives T2I samples, an Edit pipeline edit samples.
    #[arg(long)]
    model: PathBuf,
    /// A DiffSynth-Studio folder with metadata.csv (image, prompt[, edit_image]) or that file, or
    /// a kohya-style folder of pictures with same-name .txt captions (`N_name` sub-folders repeat N times).
    #[arg(long)]
    data: PathBuf,
    /// The cache folder (metadata.jsonl + samples/); a rerun skips what is cached.
    #[arg(long)]
    output: PathBuf,
    /// Bucket target area in pixels, `N` or `WxH` (1024x1024 = 1048576).
    #[arg(long, default_value = "1048576", value_parser = parse_area)]
    resolution: u64,
    /// Explicit buckets `WxH,WxH,…` (multiples of 2·vae_scale), or `dynamic` (DiffSynth: each
    /// picture at its own size, at most --resolution pixels).
    #[arg(long)]
    buckets: Option<String>,
    /// Target area in pixels of the VAE reference images, as in `generate`.
    #[arg(long, default_value_t = 1024 * 1024)]
    ref_area: u64,
    /// Target area in pixels of Edit-Plus's vision-encoder images, as in `generate`.
    #[arg(long, default_value_t = 384 * 384)]
    condition_area: u64,
    /// Leave out bad entries (each warned) instead of refusing the dataset.
    #[arg(long)]
    skip_bad: bool,
    #[command(flatten)]
    text: TextEncoderArgs,
    #[command(flatten)]
    tiling: VaeTilingArgs,
}

/// An area: `N` pixels or `WxH`.
fn parse_area(s: &str) -> Result<u64, String> {
    let num = |t: &str| t.trim().parse::<u64>().ok().filter(|&n| n > 0).ok_or(format!("`{s}`: expected N or WxH"));
    match s.split_once(['x', 'X']) {
        Some((w, h)) => num(w)?.checked_mul(num(h)?).ok_or(format!("`{s}`: too large")),
        None => num(s),
    }
}

/// `N` or `AxB` (positive integers, in the order written; `form` names them in the error).
fn parse_pair<T: std::str::FromStr + Copy + Default + PartialOrd>(s: &str, form: &str) -> Result<(T, T), String> {
    let num = |t: &str| {
        t.trim().parse::<T>().ok().filter(|n| *n > T::default()).ok_or(format!("`{s}`: expected N or {form}"))
    };
    match s.split_once(['x', 'X']) {
        Some((a, b)) => Ok((num(a)?, num(b)?)),
        None => num(s).map(|n| (n, n)),
    }
}

/// `N` or `HxW` (positive integers).
fn parse_hw(s: &str) -> Result<(usize, usize), String> {
    parse_pair(s, "HxW")
}

/// A picture size `WxH` (or `N` for N×N), width first.
fn parse_wh(s: &str) -> Result<(u32, u32), String> {
    parse_pair(s, "WxH")
}

/// `wgdit convert`: see docs/convert.md.
#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// A diffusers transformer folder, a pipeline folder (its transformer/), or a single .safetensors file (then --config).
    #[arg(long)]
    model: PathBuf,
    /// The transformer's config.json (default: the model folder's, or one beside the file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// hidden_states, encoder_hidden_states, [encoder_hidden_states_mask], timestep, img_shapes.
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write `output` [B, S_img, patch²·out_channels] (f32 safetensors).
    #[arg(long)]
    output: PathBuf,
    /// Execution mode: standard (6 Q/K/V projections per block), merged (2) or fused.
    #[arg(long, value_enum, default_value = "fused")]
    qkv: QkvArg,
    /// Modulation vectors: computed in the forward (inline) or precomputed for the inputs'
    /// timesteps first (the modulation weights then never reach the forward's plan).
    #[arg(long, value_enum, default_value = "inline")]
    modulation: ModulationArg,
    /// A LoRA file (diffusers/PEFT, DiffSynth, kohya/musubi or ComfyUI keys), optionally with a
    /// strength: `--lora style.safetensors:0.8`. Repeatable; the base weights are not modified.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<String>,
    /// Write the output even when it holds NaN or Inf values (refused by default).
    #[arg(long)]
    allow_nonfinite: bool,
    /// Device memory the DiT may use (weights, activations and what wgdit already holds), e.g.
    /// 8G: the transformer blocks that do not fit stream from the model file (docs/streaming.md).
    /// Default: the adapter's memory less a margin (or WGDIT_VRAM_BUDGET).
    #[arg(long, value_name = "SIZE", value_parser = parse_budget)]
    vram_budget: Option<u64>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// A diffusers transformer folder, a pipeline folder (its transformer/ is trained), or a single .safetensors file (then --config).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    config: Option<PathBuf>,
    /// The frozen base from another file than the pipeline folder's transformer/: a GGUF
    /// quantization (Q8_0, Q4_K, …), an fp8 or bf16 safetensors file or a diffusers folder, as
    /// `generate --transformer` (--model is then the pipeline folder; its config is --config, the
    /// one beside the file, or the folder's transformer/config.json).
    #[arg(long, value_name = "PATH")]
    transformer: Option<PathBuf>,
    /// Dataset folder: metadata.jsonl + one .safetensors sample per line (docs/training.md).
    #[arg(long)]
    data: PathBuf,
    /// Output folder: lora.safetensors, loss.csv, loss.svg (the loss curve, rewritten at each save),
    /// checkpoint-<step>/.
    #[arg(long)]
    output: PathBuf,
    /// Optimizer steps.
    #[arg(long)]
    steps: u64,
    /// LoRA rank (default 32, DiffSynth's; with --init-lora the file's).
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA alpha (default: the rank, so scale 1, as DiffSynth; with --init-lora the file's).
    #[arg(long)]
    alpha: Option<f64>,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Start from this LoRA file (diffusers/PEFT, kohya, ComfyUI or DiffSynth) instead of PEFT's
    /// init: its A/B become the initial parameters. --targets must select exactly its modules;
    /// another --rank is an error; another --alpha rescales B so the LoRA's effect is the file's.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    init_lora: Option<PathBuf>,
    /// Fold this LoRA (any format), times SCALE (default 1), into the frozen base weights before
    /// training, as DiffSynth's preset LoRA; repeatable. The trained LoRA is relative to base +
    /// presets (generate with both). f32/f16/bf16 bases only.
    #[arg(long, value_name = "FILE[:SCALE]")]
    preset_lora: Vec<String>,
    /// Comma-separated module patterns (PEFT rule); default DiffSynth's 12 per block.
    #[arg(long, default_value = wgdit::train::lora::DIFFSYNTH_TARGETS)]
    targets: String,
    #[arg(long, value_enum, default_value = "fused")]
    qkv: QkvArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Save checkpoint-<step>/ every K steps (0: only the final LoRA).
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    /// Continue from a checkpoint-<step>/ folder.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Recompute each block in the backward instead of storing its activations.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    checkpointing: OnOff,
    /// Training timesteps: DiffSynth's shifted table, or uniform σ.
    #[arg(long, value_enum, default_value_t = SamplingArg::Diffsynth)]
    timestep_sampling: SamplingArg,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Linear lr warmup steps: step s < N trains at lr·s/N (every schedule but diffsynth).
    #[arg(long, default_value_t = 0)]
    warmup: u32,
    /// After the warmup: constant (lr), linear (lr → 0 at the last step) or cosine (half-cosine
    /// lr → 0 at the last step); diffsynth: torch ConstantLR's lr/3 for 5 steps, then lr.
    #[arg(long, value_name = "SCHEDULE", default_value = "constant",
          value_parser = ["constant", "linear", "cosine", "diffsynth"])]
    lr_schedule: String,
    /// AdamW β1 (torch's default).
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f64,
    /// AdamW β2 (torch's default).
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f64,
    /// AdamW ε (torch's default).
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 0.0)]
    max_grad_norm: f32,
    /// Format of the exported lora.safetensors: diffusers (PEFT), diffsynth, kohya or comfyui.
    #[arg(long, value_enum, ignore_case = true, default_value = "diffusers")]
    format: FormatArg,
    /// On resume, accept these changed hyper-parameters (comma-separated keys, e.g. lr,max_grad_norm).
    #[arg(long, value_delimiter = ',', value_name = "KEY[,KEY]")]
    resume_override: Vec<String>,
    /// Write the LoRA even when it holds NaN or Inf values (refused by default).
    #[arg(long)]
    allow_nonfinite: bool,
    /// Device memory the DiT may use (weights, activations and what wgdit already holds), e.g.
    /// 8G: the transformer blocks that do not fit stream from the model file (docs/streaming.md).
    /// Default: the adapter's memory less a margin (or WGDIT_VRAM_BUDGET).
    #[arg(long, value_name = "SIZE", value_parser = parse_budget)]
    vram_budget: Option<u64>,
    #[command(flatten)]
    samples: SampleArgs,
}

/// `train --sample-*`: pictures with the LoRA as it learns (docs/training.md, "Sample images").
#[derive(Args)]
struct SampleArgs {
    /// Every K optimizer steps (and at step 0 and the last step) draw one picture per
    /// --sample-prompt with the current LoRA into <output>/samples/step-<step:06>-<i>.png.
    /// --model must be a pipeline folder with text_encoder/ and tokenizer/; the samples run on
    /// the trained DiT itself (no second copy), the prompts are encoded once.
    #[arg(long, value_name = "K")]
    sample_every: Option<u64>,
    /// A prompt to draw (repeatable: one picture each).
    #[arg(long, value_name = "TEXT")]
    sample_prompt: Vec<String>,
    /// Reference image of an Edit pipeline, as `generate --image` (repeatable).
    #[arg(long, value_name = "FILE")]
    sample_image: Vec<PathBuf>,
    /// Denoising steps of each sample.
    #[arg(long, value_name = "N", default_value_t = wgdit::train::samples::DEFAULT_SAMPLE_STEPS)]
    sample_steps: usize,
    /// Sample size in pixels, `WxH` or `N` (default: the pipeline's, or the references').
    #[arg(long, value_name = "WxH", value_parser = parse_wh)]
    sample_size: Option<(u32, u32)>,
    /// Seed of every sample's noise (the same at every step, so pictures compare).
    #[arg(long, value_name = "S", default_value_t = 0)]
    sample_seed: u64,
    /// Area in pixels of the samples' VAE reference images, as `generate --ref-area` (default:
    /// the --ref-area `wgdit cache` recorded in --data, else 1024·1024).
    #[arg(long, value_name = "PIXELS")]
    sample_ref_area: Option<u64>,
    /// Area in pixels of the samples' vision-encoder images, as `generate --condition-area`
    /// (default: the --condition-area `wgdit cache` recorded in --data, else 384·384).
    #[arg(long, value_name = "PIXELS")]
    sample_condition_area: Option<u64>,
}

impl SampleArgs {
    /// The options, or an error when --sample-* flags come without --sample-every.
    fn options(self) -> wgdit::Result<Option<wgdit::train::samples::SampleOptions>> {
        let Some(every) = self.sample_every else {
            let areas = self.sample_ref_area.is_some() || self.sample_condition_area.is_some();
            if !self.sample_prompt.is_empty() || !self.sample_image.is_empty() || self.sample_size.is_some() || areas {
                return Err(wgdit::Error::input(
                    "--sample-prompt/--sample-image/--sample-size/--sample-*-area need --sample-every K",
                ));
            }
            return Ok(None);
        };
        let mut s = wgdit::train::samples::SampleOptions::new(every, self.sample_prompt);
        (s.images, s.steps, s.size, s.seed) =
            (self.sample_image, self.sample_steps, self.sample_size, self.sample_seed);
        (s.ref_area, s.condition_area) = (self.sample_ref_area, self.sample_condition_area);
        Ok(Some(s))
    }
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Dispatches per block and per step, planned peak activations and (with --model) wall time per forward.
    Dispatches(DispatchArgs),
    /// Time, dispatches and planned peak memory of each phase of a picture (VAE encode, denoising
    /// step, VAE decode); with --preset: planned at full size, without weights or GPU.
    Generate(BenchGenerateArgs),
    /// GEMM and attention kernels of every family (portable, f16, coop, coop-emulated) side by
    /// side at the real models' shapes: median GPU ms, TFLOP/s, % of the device's peak
    /// (docs/kernels.md, "Kernel bench").
    Kernels(BenchKernelsArgs),
}

#[derive(Args)]
struct BenchKernelsArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// One JSON object per row and variant per line instead of a table.
    #[arg(long)]
    json: bool,
    /// A small subset at small shapes (seconds on lavapipe; CI) instead of the full-size rows.
    #[arg(long)]
    quick: bool,
    /// The device's f16 matrix peak in TFLOP/s for the % peak column (default: the built-in
    /// table of known devices by adapter name).
    #[arg(long, value_name = "TFLOPS")]
    peak: Option<f64>,
    /// Timed iterations per row and variant, after one warm-up (default 3 with --quick, else 20).
    #[arg(long)]
    iters: Option<usize>,
    /// The variants to run, in order: portable, f16, coop, coop-emulated (default: all four).
    #[arg(long, value_name = "a,b,...", value_delimiter = ',')]
    kernels_list: Vec<String>,
}

#[derive(Args)]
struct BenchGenerateArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// A pipeline folder: runs the pipeline once (random prompt embeddings, CFG on) and times each phase.
    #[arg(long, conflicts_with = "preset", required_unless_present = "preset")]
    model: Option<PathBuf>,
    /// The real models' configs: plan each phase at full size without weights or GPU.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    #[arg(long, default_value_t = 1024)]
    width: u32,
    #[arg(long, default_value_t = 1024)]
    height: u32,
    /// Denoising steps (with --model).
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Prompt tokens.
    #[arg(long, default_value_t = 128)]
    text_tokens: usize,
    /// Reference images for Edit pipelines (default: one synthetic picture of the output size).
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// Target area of the VAE reference images (diffusers: 1024·1024).
    #[arg(long, default_value_t = 1024 * 1024)]
    ref_area: u64,
    #[arg(long, value_enum, default_value = "fused")]
    qkv: QkvArg,
    /// Modulation vectors precomputed before the loop (as `generate` does by default) or inline.
    #[arg(long, value_enum, default_value = "precompute")]
    modulation: ModulationArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// With --model: the DiT's device memory budget (blocks past it stream; docs/streaming.md).
    #[arg(long, value_name = "SIZE", value_parser = parse_budget, requires = "model")]
    vram_budget: Option<u64>,
}

#[derive(Args)]
struct DispatchArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    /// Model folder or file: also measures wall time per forward on the adapter.
    #[arg(long, conflicts_with = "preset", required_unless_present = "preset")]
    model: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// A built-in config: counts without weights or GPU.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// standard, merged, fused, or all.
    #[arg(long, value_enum, default_value = "all")]
    qkv: BenchQkv,
    /// Image tokens (target grid chosen as close to square as possible).
    #[arg(long, default_value_t = 4096)]
    tokens: usize,
    /// Text tokens.
    #[arg(long, default_value_t = 128)]
    text_tokens: usize,
    /// One JSON object per mode, one per line.
    #[arg(long)]
    json: bool,
    /// Timed forwards per mode (with --model).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// With --preset: count a LoRA training step (DiffSynth targets at this rank) instead.
    #[arg(long)]
    train_rank: Option<usize>,
    /// With --model: also time the forward with the blocks this budget streams (e.g. 64M) next
    /// to the all-resident one: ratio, bytes uploaded, upload time and how much of it is hidden.
    #[arg(long, value_name = "SIZE", value_parser = parse_budget, requires = "model")]
    vram_budget: Option<u64>,
}

#[derive(Args)]
struct ConvertArgs {
    /// Checkpoint file, diffusers model folder, or LoRA file.
    #[arg(long)]
    input: std::path::PathBuf,
    /// Output file, or folder (for a folder input or with --shard-size).
    #[arg(long)]
    output: std::path::PathBuf,
    /// Target layout: merged (attn.to_qkv, attn.add_qkv_proj) or standard (to_q/to_k/to_v, ...).
    #[arg(long, value_enum)]
    to: ConvertTo,
    /// Output key format: diffusers (default for LoRAs), comfyui, diffsynth, kohya (LoRAs only).
    #[arg(long, value_enum, ignore_case = true)]
    format: Option<FormatArg>,
    /// Output dtype: keep, bf16, f16 or f32.
    #[arg(long, value_enum, ignore_case = true, default_value = "keep")]
    dtype: DtypeArg,
    /// Maximum shard size, e.g. 5GB (a folder input defaults to 5GB).
    #[arg(long)]
    shard_size: Option<String>,
    /// List what would be merged, split and copied; write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct QuantizeArgs {
    /// Checkpoint: a safetensors file (any ComfyUI prefix) or a diffusers model folder.
    #[arg(long)]
    input: PathBuf,
    /// Output: a .gguf file, or a .safetensors file for the fp8 types.
    #[arg(long)]
    output: PathBuf,
    /// q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, f16, bf16, f32 (.gguf);
    /// f8_e4m3, f8_e5m2 (.safetensors).
    #[arg(long = "type", value_name = "TYPE")]
    target: String,
    /// Tensors whose name contains PATTERN get TYPE (default f16) instead; repeatable, the first
    /// match wins.
    #[arg(long = "keep", value_name = "PATTERN[=TYPE]")]
    keep: Vec<String>,
    /// fp8 only: ComfyUI "scaled fp8" (per-tensor scale_weight, amax / max(fp8)).
    #[arg(long)]
    scaled: bool,
    /// Quantization threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
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
        Cmd::Quantize(args) => quantize(args),
        Cmd::Forward(args) => forward(args),
        Cmd::Train(args) => train(args),
        Cmd::Cache(args) => cache(args),
        Cmd::Bench { what: BenchCmd::Dispatches(args) } => bench_dispatches(args),
        Cmd::Bench { what: BenchCmd::Generate(args) } => bench_generate(args),
        Cmd::Bench { what: BenchCmd::Kernels(args) } => bench_kernels(args),
        Cmd::Vae { what } => vae(what),
        Cmd::Generate(args) => generate(args),
        Cmd::Tokenize(args) => tokenize(args),
        Cmd::EncodePrompt(args) => encode_prompt(args),
        Cmd::Plan(args) => plan(args),
    }
}

fn plan(a: PlanArgs) -> wgdit::Result<()> {
    use wgdit::pipeline::plan::{plan, weights_type, PlanModel, PlanRequest};
    let model = match (a.preset, a.model) {
        (Some(p), _) => PlanModel::Preset {
            name: p.name().into(),
            dit: p.dit()?,
            class: p.class(),
            weights: weights_type(a.weights.as_deref().unwrap_or("bf16"))?,
            keep: a.keep.iter().map(|k| wgdit::convert::quantize::KeepRule::parse(k)).collect::<wgdit::Result<_>>()?,
        },
        (None, Some(path)) => PlanModel::Model { path, config: a.config },
        (None, None) => unreachable!("clap requires --model or --preset"),
    };
    let budget = match a.vram_budget {
        Some(b) => Some(b),
        None => wgdit::budget::env_budget(wgdit::budget::VRAM_ENV)?,
    };
    let req = PlanRequest {
        model,
        width: a.width,
        height: a.height,
        images: a.images,
        text_tokens: a.text_tokens,
        steps: a.steps,
        cfg: !a.no_cfg,
        mode: a.qkv.mode(),
        budget,
        train_rank: a.train_rank,
    };
    let p = plan(&req)?;
    if a.json {
        println!("{}", serde_json::to_string(&p).expect("cannot fail: plain data"));
    } else {
        print!("{}", p.table());
    }
    Ok(())
}

fn encode_prompt(a: EncodePromptArgs) -> wgdit::Result<()> {
    let gpu = gpu::Gpu::new(&a.gpu.options())?;
    let req = wgdit::pipeline::prompt::EncodeRequest {
        model: &a.model,
        prompt: &a.prompt,
        images: &a.images,
        ref_area: a.ref_area,
        condition_area: a.condition_area,
        residency: a.text.residency(),
        text_encoder: a.text.text_encoder.as_deref(),
        output: &a.output,
    };
    let r = wgdit::pipeline::prompt::encode_to_file(&gpu, &req)?;
    eprintln!(
        "wrote {} (prompt_embeds [1, {}, {}], {}; {} encoder tokens, weights {:?}, {:.2} s) on {}",
        r.output.display(),
        r.tokens,
        r.dim,
        r.class,
        r.encoder_tokens,
        r.residency,
        r.seconds,
        gpu.info().name
    );
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> wgdit::Result<()> {
    use wgdit::text::Template;
    let template = a.template.map(|t| match t {
        TemplateArg::T2i => Template::TextToImage,
        TemplateArg::Edit => Template::Edit,
        TemplateArg::EditPlus => Template::EditPlus,
    });
    let r = wgdit::text::tokenize(&a.model, &a.prompt, template, a.images)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("cannot fail: plain data"));
        return Ok(());
    }
    let ids: Vec<String> = r.ids.iter().map(u32::to_string).collect();
    println!("{}", ids.join(" "));
    eprintln!(
        "{} tokens ({}), tokenizer {}",
        r.ids.len(),
        match template {
            Some(t) => format!(
                "{t:?} template; the pipeline keeps the {} from index {}",
                r.ids.len().saturating_sub(r.drop),
                r.drop
            ),
            None => "no template".into(),
        },
        r.tokenizer.display()
    );
    Ok(())
}

fn bench_kernels(a: BenchKernelsArgs) -> wgdit::Result<()> {
    use wgdit::pipeline::kernel_bench::{report, run, Event, KernelBench, Peaks};
    let mut b = KernelBench::new(a.quick);
    if let Some(p) = a.peak {
        if !(p.is_finite() && p > 0.0) {
            return Err(wgdit::Error::input(format!("--peak {p}: a peak is a positive number of TFLOP/s")));
        }
        b.peak = Some(p);
    }
    b.iters = a.iters.unwrap_or(b.iters).max(1);
    if !a.kernels_list.is_empty() {
        b.variants = a.kernels_list.iter().map(|s| parse_variant(s)).collect::<wgdit::Result<_>>()?;
    }
    let gpu = gpu::Gpu::new(&a.gpu.options())?;
    let peaks = Peaks::resolve(&gpu.info().name, b.peak);
    let header = report::header(&gpu, b.quick, b.iters, &peaks);
    match a.json {
        true => eprint!("{header}"),
        false => println!("{header}{}", report::table_head()),
    }
    run(&gpu, &b, &mut |e| match (e, a.json) {
        (Event::Note(n), true) => eprintln!("{n}"),
        (Event::Note(n), false) => println!("  ({n})"),
        (Event::Row(r), true) => println!("{}", serde_json::to_string(r).expect("cannot fail: plain data")),
        (Event::Row(r), false) => println!("{}", report::table_line(r)),
    })?;
    Ok(())
}

/// One `--kernels-list` entry: a kernel family (not `auto`).
fn parse_variant(s: &str) -> wgdit::Result<wgdit::gpu::Family> {
    match wgdit::gpu::choice::parse_kernels(s.trim())? {
        Some(f) => Ok(f),
        None => {
            Err(wgdit::Error::input("--kernels-list: name variants (portable, f16, coop, coop-emulated), not auto"))
        }
    }
}

fn bench_generate(a: BenchGenerateArgs) -> wgdit::Result<()> {
    use wgdit::models::qwen_image_vae::VaeConfig;
    use wgdit::pipeline::bench::{plan_preset, run, BenchRun};
    let b = match (a.preset, a.model) {
        (Some(p), _) => plan_preset(
            &p.dit()?,
            &VaeConfig::qwen_image(),
            p.class(),
            a.width,
            a.height,
            a.text_tokens,
            a.qkv.mode(),
            a.modulation.modulation(),
        )?,
        (None, Some(model)) => {
            let gpu = gpu::Gpu::new(&a.gpu.options())?;
            let r = BenchRun {
                model,
                width: a.width,
                height: a.height,
                steps: a.steps,
                text_tokens: a.text_tokens,
                images: a.images,
                mode: a.qkv.mode(),
                modulation: a.modulation.modulation(),
                ref_area: a.ref_area,
                vram_budget: a.vram_budget,
            };
            let b = run(&gpu, &r)?;
            eprintln!("on {}", gpu.info().name);
            b
        }
        (None, None) => unreachable!("clap requires --model or --preset"),
    };
    if a.json {
        println!("{}", serde_json::to_string(&b).unwrap_or_default());
    } else {
        print!("{}", b.table());
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> wgdit::Result<()> {
    use wgdit::pipeline::generate::{generate, GenerateOptions, Noise, Prompt, VaeTiling};
    let prompt = match (a.prompt, a.prompt_embeds) {
        (Some(t), _) => Prompt::Text(t),
        (None, Some(p)) => Prompt::Embeds(p),
        (None, None) => unreachable!("clap requires one of them"),
    };
    let mut o = GenerateOptions::new(a.model, prompt, a.output.clone());
    o.negative = match (a.negative_prompt, a.negative_prompt_embeds) {
        (Some(t), _) => Some(Prompt::Text(t)),
        (None, Some(p)) => Some(Prompt::Embeds(p)),
        (None, None) => None,
    };
    (o.images, o.width, o.height, o.steps, o.sigmas, o.true_cfg) =
        (a.images, a.width, a.height, a.steps, a.sigmas, a.true_cfg);
    o.noise = match (a.seed, a.noise) {
        (_, Some(p)) => Noise::File(p),
        (s, None) => Noise::Seed(s.unwrap_or(0)),
    };
    o.loras = a.loras.iter().map(|s| parse_lora_arg(s)).collect::<wgdit::Result<Vec<_>>>()?;
    (o.qkv, o.modulation, o.ref_area, o.condition_area, o.save_latents) =
        (a.qkv.mode(), a.modulation.modulation(), a.ref_area, a.condition_area, a.save_latents);
    o.vae_tiling = match a.vae_tiling {
        TilingArg::Auto => VaeTiling::Auto,
        TilingArg::On => VaeTiling::On,
        TilingArg::Off => VaeTiling::Off,
    };
    o.vae_budget = a.vae_budget_mib << 20;
    o.allow_nonfinite = a.allow_nonfinite;
    o.text_residency = a.text.residency();
    o.text_encoder = a.text.text_encoder.clone();
    o.transformer = a.transformer.clone();
    o.vram_budget = a.vram_budget;
    let gpu = gpu::Gpu::new(&a.gpu.options())?;
    let bar = indicatif::ProgressBar::new(o.steps as u64);
    let style = indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [{elapsed} < {eta}]")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    let r = generate(&gpu, &o, &mut |s| {
        bar.set_length(s.steps as u64);
        bar.set_position(s.step as u64);
        bar.set_message(format!("{:.2} s/step", s.ms / 1e3));
    });
    bar.finish_and_clear();
    let r = r?;
    let mib = |b: u64| b as f64 / 1048576.0;
    let per_step = r.step_ms.iter().sum::<f64>() / r.step_ms.len().max(1) as f64 / 1e3;
    let tiles = if r.vae_tiles > 0 { format!(", {} tiles", r.vae_tiles) } else { String::new() };
    let premod = match &r.precompute {
        Some(p) => format!(
            " + precomputed modulation {} ({} timesteps, {:.0} ms; {} of weights released)",
            wgdit::budget::human(r.modulation_bytes),
            p.rows,
            p.ms,
            wgdit::budget::human(p.released_bytes)
        ),
        None => " (modulation inline)".into(),
    };
    eprintln!(
        "wrote {} ({}x{}, {}, {} steps{}, {:.2} s/step, {} dispatches/step; planned peak: DiT {:.1} MiB + weights {:.1} MiB{premod}, VAE decode {:.1} MiB{tiles}; text encoder {:.0} ms, VAE encode {:.0} ms, decode {:.0} ms) on {}",
        r.output.display(),
        r.width,
        r.height,
        r.class.class_name(),
        r.steps,
        if r.cfg { ", true CFG" } else { "" },
        per_step,
        r.dispatches_per_step,
        mib(r.dit_peak_bytes),
        mib(r.weight_bytes),
        mib(r.vae_decode_peak_bytes),
        r.text_encode_ms,
        r.vae_encode_ms,
        r.vae_decode_ms,
        gpu.info().name
    );
    print_streaming(r.stream.iter(), a.vram_budget.is_some());
    Ok(())
}

fn vae(cmd: VaeCmd) -> wgdit::Result<()> {
    use wgdit::pipeline::vae::{run_decode, run_encode, DecodeTask, EncodeTask, VaeReport};
    let mib = |b: u64| b as f64 / 1048576.0;
    let report = |what: &str, out: &std::path::Path, r: &VaeReport, gpu: &gpu::Gpu| {
        let tiles = if r.tiles > 0 { format!(", {} tiles", r.tiles) } else { String::new() };
        eprintln!(
            "{what}: wrote {} {:?} ({} dispatches{tiles}, planned untiled peak {:.1} MiB, run {:.1} ms) on {}",
            out.display(),
            r.output_shape,
            r.dispatches,
            mib(r.planned_peak_bytes),
            r.run_ms,
            gpu.info().name
        );
    };
    match cmd {
        VaeCmd::Encode(a) => {
            let g = gpu::Gpu::new(&a.gpu.options())?;
            let task = EncodeTask {
                model: a.model,
                image: a.image,
                output: a.output.clone(),
                tiling: a.tiling.tiling()?,
                allow_nonfinite: a.allow_nonfinite,
            };
            let r = run_encode(&g, &task)?;
            report("vae encode", &a.output, &r, &g);
        }
        VaeCmd::Decode(a) => {
            let g = gpu::Gpu::new(&a.gpu.options())?;
            let tiling = a.tiling.tiling()?;
            let (model, latents, output) = (a.model, a.latents, a.output.clone());
            let task = DecodeTask { model, latents, output, tiling, allow_nonfinite: a.allow_nonfinite };
            let r = run_decode(&g, &task)?;
            report("vae decode", &a.output, &r, &g);
        }
        VaeCmd::Plan(a) => vae_plan(a)?,
    }
    Ok(())
}

fn vae_plan(a: VaePlanArgs) -> wgdit::Result<()> {
    let (h, w) = a.size;
    print!("{}", wgdit::pipeline::vae::plan_table(a.model.as_deref(), h, w, a.scores_mib << 20)?);
    Ok(())
}

fn forward(a: ForwardArgs) -> wgdit::Result<()> {
    let gpu = gpu::Gpu::new(&a.gpu.options())?;
    let loras = a.loras.iter().map(|s| parse_lora_arg(s)).collect::<wgdit::Result<Vec<_>>>()?;
    let output = a.output.clone();
    let (model, config, inputs, mode, allow_nonfinite) = (a.model, a.config, a.inputs, a.qkv.mode(), a.allow_nonfinite);
    let vram_budget = a.vram_budget;
    let modulation = a.modulation.modulation();
    let task = ForwardTask { model, config, inputs, output, mode, modulation, loras, allow_nonfinite, vram_budget };
    let r = run_forward(&gpu, &task)?;
    eprintln!(
        "wrote {} output {:?} ({} mode, {} dispatches, plan {:.1} ms, run {:.1} ms, weights {:.1} MiB, activations {:.1} MiB) on {}",
        a.output.display(),
        r.output_shape,
        a.qkv.mode().name(),
        r.dispatches,
        r.plan_ms,
        r.run_ms,
        r.weight_bytes as f64 / 1048576.0,
        r.peak_activation_bytes as f64 / 1048576.0,
        gpu.info().name
    );
    print_streaming(r.stream.iter(), a.vram_budget.is_some());
    Ok(())
}

/// The weight-streaming line of each DiT plan: when blocks streamed, or a budget was given.
fn print_streaming<'a>(
    reports: impl Iterator<Item = &'a wgdit::models::qwen_image::stream::StreamReport>,
    asked: bool,
) {
    for s in reports.filter(|s| asked || s.resident_blocks < s.blocks) {
        eprintln!("{}", s.line());
    }
}

fn train(a: TrainArgs) -> wgdit::Result<()> {
    use wgdit::train::run::{train, TrainOptions};
    use wgdit::train::schedule::Sampling;
    let gpu = gpu::Gpu::new(&a.gpu.options())?;
    let mut o = TrainOptions::new(a.model, a.data, a.output, a.steps);
    (o.config, o.transformer) = (a.config, a.transformer);
    // --init-lora without --rank/--alpha takes the file's.
    let file = match &a.init_lora {
        Some(p) if a.rank.is_none() || a.alpha.is_none() => {
            let lora = wgdit::models::qwen_image::lora::read_lora(p)?;
            Some(wgdit::train::lora::file_rank_alpha(&lora).map_err(|e| wgdit::Error::file(p, e.to_string()))?)
        }
        _ => None,
    };
    let rank = a.rank.or(file.map(|f| f.0)).unwrap_or(32);
    let alpha = a.alpha.or(file.filter(|f| f.0 == rank).map(|f| f.1)).unwrap_or(rank as f64);
    (o.rank, o.alpha, o.lr, o.targets, o.qkv, o.seed) = (rank, alpha, a.lr, a.targets, a.qkv.mode(), a.seed);
    o.init_lora = a.init_lora;
    o.preset_loras = a.preset_lora.iter().map(|s| parse_lora_arg(s)).collect::<wgdit::Result<_>>()?;
    (o.batch_size, o.grad_accum, o.save_every, o.resume) = (a.batch_size, a.grad_accum, a.save_every, a.resume);
    o.checkpointing = a.checkpointing == OnOff::On;
    o.sampling = match a.timestep_sampling {
        SamplingArg::Uniform => Sampling::Uniform,
        SamplingArg::Diffsynth => Sampling::DiffSynth,
    };
    (o.weight_decay, o.warmup, o.max_grad_norm) = (a.weight_decay, a.warmup, a.max_grad_norm);
    (o.lr_schedule, o.adam_beta1, o.adam_beta2, o.adam_eps) = (a.lr_schedule, a.adam_beta1, a.adam_beta2, a.adam_eps);
    o.format = a.format.format().lora();
    (o.resume_override, o.allow_nonfinite, o.vram_budget) = (a.resume_override, a.allow_nonfinite, a.vram_budget);
    o.samples = a.samples.options()?;
    o.progress = true;
    let r = train(&gpu, &o)?;
    if let (Some(step), Some(dir)) = (r.up_to_date, &o.resume) {
        eprintln!("{}", wgdit::train::run::nothing_left(dir, step, o.steps));
        return Ok(());
    }
    let (first, last) = (r.losses.first().copied().unwrap_or(0.0), r.losses.last().copied().unwrap_or(0.0));
    eprintln!(
        "wrote {} ({} steps, loss {first:.4} -> {last:.4}, {:.0} ms/step, {} dispatches/step, peak activations {:.1} MiB) on {}",
        r.lora_file.display(),
        r.losses.len(),
        r.mean_step_ms,
        r.dispatches_per_step,
        r.peak_activation_bytes as f64 / 1048576.0,
        gpu.info().name
    );
    if o.samples.is_some() {
        eprintln!("samples in {}", o.output.join(wgdit::train::samples::SAMPLES_DIR).display());
    }
    print_streaming(r.stream.iter(), a.vram_budget.is_some());
    Ok(())
}

fn cache(a: CacheArgs) -> wgdit::Result<()> {
    use wgdit::train::cache::{cache, CacheOptions};
    let mut o = CacheOptions::new(a.model, a.data, a.output);
    (o.resolution, o.buckets, o.ref_area, o.condition_area) = (a.resolution, a.buckets, a.ref_area, a.condition_area);
    (o.skip_bad, o.residency, o.text_encoder) = (a.skip_bad, a.text.residency(), a.text.text_encoder.clone());
    o.tiling = a.tiling.tiling()?;
    o.progress = true;
    let gpu = gpu::Gpu::new(&a.gpu.options())?;
    let r = cache(&gpu, &o)?;
    let per = if r.encoded > 0 {
        format!(", {:.2} s/picture", (r.text_seconds + r.vae_seconds) / r.encoded as f64)
    } else {
        String::new()
    };
    let buckets: Vec<String> = r.buckets.iter().map(|(s, n)| format!("{}x{}: {n}", s.width, s.height)).collect();
    eprintln!(
        "wrote {} ({} samples, {} lines with repeats, {}; {} encoded, {} already cached, {} bad skipped{}; buckets {}; text encoder {:.1} s, VAE {:.1} s, {:.1} s in all{per}) on {}",
        o.output.join("metadata.jsonl").display(),
        r.samples,
        r.lines,
        r.class.class_name(),
        r.encoded,
        r.reused,
        r.skipped.len(),
        if r.stale > 0 { format!(", {} stale sample files left in samples/", r.stale) } else { String::new() },
        buckets.join(", "),
        r.text_seconds,
        r.vae_seconds,
        r.seconds,
        gpu.info().name
    );
    Ok(())
}

fn bench_dispatches(a: DispatchArgs) -> wgdit::Result<()> {
    use wgdit::models::qwen_image::bench::{self, DispatchBench};
    let modes: Vec<QkvMode> = match a.qkv {
        BenchQkv::All => QkvMode::ALL.to_vec(),
        BenchQkv::Standard => vec![QkvMode::Standard],
        BenchQkv::Merged => vec![QkvMode::Merged],
        BenchQkv::Fused => vec![QkvMode::Fused],
    };
    let b = DispatchBench { tokens: a.tokens, text_tokens: a.text_tokens, runs: a.runs };
    b.check()?;
    if a.train_rank == Some(0) {
        return Err(wgdit::Error::input("--train-rank 0: a LoRA has rank 1 or more"));
    }
    if let (Some(p), Some(rank)) = (a.preset, a.train_rank) {
        for r in bench::count_training(&p.dit()?, &b, &modes, rank) {
            if a.json {
                println!("{}", serde_json::to_string(&r).expect("cannot fail: plain data"));
            } else {
                println!(
                    "{:<8} checkpointing {:<5}  {:>4} dispatches/block  {:>6} dispatches/step  peak activations {:>9.1} MiB  {} LoRA params",
                    r.mode, r.checkpointing, r.dispatches_per_block, r.dispatches_per_step,
                    r.peak_activation_bytes as f64 / 1048576.0, r.lora_parameters
                );
            }
        }
        return Ok(());
    }
    if let (Some(m), Some(budget)) = (&a.model, a.vram_budget) {
        let g = gpu::Gpu::new(&a.gpu.options())?;
        for (mode, rows) in bench::stream_model(&g, m, a.config.as_deref(), &b, &modes, budget)? {
            match a.json {
                true => println!("{}", serde_json::to_string(&rows).expect("cannot fail: plain data")),
                false => print!(
                    "{} mode, weight streaming on {}:\n{}",
                    mode.name(),
                    g.info().name,
                    bench::stream_table(&rows)
                ),
            }
        }
        return Ok(());
    }
    let rows = match (a.preset, &a.model) {
        (Some(p), _) => bench::count_preset(&p.dit()?, &b, &modes),
        (None, Some(m)) => bench::measure_model(&gpu::Gpu::new(&a.gpu.options())?, m, a.config.as_deref(), &b, &modes)?,
        (None, None) => unreachable!("clap requires --model or --preset"),
    };
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("cannot fail: plain data"));
        }
    } else {
        print!("{}", bench::table(&rows));
    }
    Ok(())
}

fn convert(a: ConvertArgs) -> wgdit::Result<()> {
    use wgdit::convert::{self, ConvertOptions, Target};
    let opts = ConvertOptions {
        input: a.input,
        output: a.output,
        to: match a.to {
            ConvertTo::Merged => Target::Merged,
            ConvertTo::Standard => Target::Standard,
        },
        format: a.format.map(FormatArg::format),
        dtype: a.dtype.choice(),
        shard_size: a.shard_size.as_deref().map(convert::parse_size).transpose()?,
        dry_run: a.dry_run,
        progress: true,
    };
    println!("{}", convert::convert(&opts)?);
    Ok(())
}

fn quantize(a: QuantizeArgs) -> wgdit::Result<()> {
    use wgdit::convert::quantize::{self, KeepRule, QuantizeOptions};
    let opts = QuantizeOptions {
        input: a.input,
        output: a.output,
        target: quantize::parse_target(&a.target)?,
        keep: a.keep.iter().map(|k| KeepRule::parse(k)).collect::<wgdit::Result<_>>()?,
        scaled: a.scaled,
        threads: a.threads.unwrap_or_else(quantize::default_threads),
        progress: true,
    };
    println!("{}", quantize::quantize(&opts)?);
    Ok(())
}

fn devices(opts: &GpuOptions, json: bool) -> wgdit::Result<()> {
    let opts = opts.clone().with_env()?;
    let mut list = gpu::list_adapters(opts.backend);
    for a in &mut list {
        if opts.kernels.is_some() || opts.precision.is_some() {
            a.kernels = gpu::choice::resolve(opts.kernels, opts.precision, &a.offer())?;
        }
    }
    if let Some(sel) = &opts.adapter {
        // The same rule as adapter selection: an index of this list, else a name substring.
        let names: Vec<String> = list.iter().map(|a| format!("[{}] {}", a.index, a.name)).collect();
        list.retain(|a| match sel.parse::<usize>() {
            Ok(i) => a.index == i,
            Err(_) => a.name.to_lowercase().contains(&sel.to_lowercase()),
        });
        if list.is_empty() {
            return Err(wgdit::Error::NoAdapter(format!(
                "--adapter {sel}: no adapter has that index or name; available: {}",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            )));
        }
    }
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
            "    limits: storage binding {:.0} MiB (adapter {:.0} MiB), buffer {:.0} MiB, workgroup storage {} B, {} invocations/workgroup, {} workgroups/dim, {} storage buffers/stage",
            mib(l.max_storage_binding), mib(l.adapter_max_storage_binding), mib(l.max_buffer), l.max_workgroup_storage,
            l.max_invocations_per_workgroup, l.max_workgroups_per_dim, l.max_storage_buffers_per_stage
        );
        match a.device_memory {
            Some(b) => println!("    device memory: {} (largest device-local heap)", wgdit::budget::human(b)),
            None => println!("    device memory: not reported by this backend"),
        }
        let (lo, hi) = a.coop.subgroup_sizes;
        let configs: Vec<String> =
            a.coop.configs.iter().map(|c| format!("{}x{}x{} {}->{}", c.m, c.n, c.k, c.ab, c.c)).collect();
        println!(
            "    subgroup size {lo}..{hi}; cooperative matrices: {}",
            if configs.is_empty() { "none".to_string() } else { configs.join(", ") }
        );
        let k = &a.kernels;
        println!(
            "    kernels: {} (precision {}, fragments {}x{}, {} lanes) - {}",
            k.family.name(),
            k.precision.name(),
            k.frag,
            k.frag,
            k.lanes,
            k.reason
        );
    }
    Ok(())
}
