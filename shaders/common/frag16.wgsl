// frag16: the fragment edge of an emulated tile program (16x16x16, as coop16).
const FRAG: u32 = 16u;
