// Imported first by test files that want several emulated devices (before the addon loads):
// one per shared-memory tier (227 KB sm_90, 163 KB sm_80, 99 KB sm_86), each with a few SMs so
// split plans put several tiles in a split. No effect on a real GPU.
process.env['MLA_EMU_DEVICES'] ??= 'sm_90:3,sm_80:4,sm_86:2';
export const EMULATED_TIERS = ['sm_90', 'sm_80', 'sm_86'] as const;
