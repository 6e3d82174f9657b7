//! The registry of embedded WGSL shaders: one `Shader` per file in `shaders/`, listed in `ALL`,
//! which a test walks to validate every shader with naga (no GPU needed).

/// A WGSL source file compiled into the binary.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shaders {
    ($($ident:ident => $file:literal),* $(,)?) => {
        $(pub const $ident: Shader = Shader { name: $file, source: include_str!(concat!("../shaders/", $file, ".wgsl")) };)*
        /// Every registered shader.
        pub const ALL: &[Shader] = &[$($ident),*];
    };
}

shaders! {
    ELEMENTWISE => "elementwise",
    ATTENTION => "attention",
    ATTENTION_BACKWARD => "attention_backward",
}
