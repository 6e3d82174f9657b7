// frag8: the fragment edge of an emulated tile program (8x8x8, as coop8: Metal's shape).
const FRAG: u32 = 8u;
