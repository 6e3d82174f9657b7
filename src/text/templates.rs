//! The prompt templates of the three pipelines and their drop indices (diffusers 0.42
//! `pipeline_qwenimage.py`, `pipeline_qwenimage_edit.py`, `pipeline_qwenimage_edit_plus.py`; spec
//! vae-and-text-encoder.md §2.1). The encoder sees the whole template; the DiT gets the hidden
//! states from `drop` on (the system block and `<|im_start|>user\n` are cut).

const T2I_SYSTEM: &str = "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:";
const EDIT_SYSTEM: &str = "Describe the key features of the input image (color, shape, size, texture, objects, background), then explain how the user's text instruction should alter or modify the image. Generate a new image that meets the user's requirements while maintaining consistency with the original input where appropriate.";

/// One image's placeholder before the processor expands `<|image_pad|>`.
pub const VISION_BLOCK: &str = "<|vision_start|><|image_pad|><|vision_end|>";

/// Which pipeline's template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Template {
    /// `QwenImagePipeline`: text only, drop 34.
    TextToImage,
    /// `QwenImageEditPipeline`: one image block before the prompt, drop 64.
    Edit,
    /// `QwenImageEditPlusPipeline`: `Picture i: <vision block>` per image, drop 64.
    EditPlus,
}

impl Template {
    /// Tokens cut from the front of the encoder's output (`prompt_template_encode_start_idx`).
    pub fn drop(self) -> usize {
        match self {
            Template::TextToImage => 34,
            Template::Edit | Template::EditPlus => 64,
        }
    }

    /// The text the tokenizer sees for `prompt` with `images` condition images (each image one
    /// `<|image_pad|>`, expanded later). Edit has exactly one image block whatever `images` is.
    pub fn fill(self, prompt: &str, images: usize) -> String {
        let (system, user) = match self {
            Template::TextToImage => (T2I_SYSTEM, prompt.to_string()),
            Template::Edit => (EDIT_SYSTEM, format!("{VISION_BLOCK}{prompt}")),
            Template::EditPlus => {
                let prefix: String = (1..=images).map(|i| format!("Picture {i}: {VISION_BLOCK}")).collect();
                (EDIT_SYSTEM, format!("{prefix}{prompt}"))
            }
        };
        format!("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    }

    /// Whether `max_sequence_length` applies (T2I only: the Edit pipelines ignore it).
    pub fn applies_max_sequence_length(self) -> bool {
        self == Template::TextToImage
    }
}

/// `tokenizer_max_length` of all three pipelines: at most this many tokens after the drop (T2I
/// truncates the tokenized template at `1024 + drop`).
pub const TOKENIZER_MAX_LENGTH: usize = 1024;
/// `max_sequence_length` default of `__call__` (T2I), and its upper bound.
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;
