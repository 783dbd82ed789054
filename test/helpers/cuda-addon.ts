// Imported first by tests of the CUDA addon itself (before the addon loads): MLA_CUDA_DEVICE=cuda
// whatever npm test chose, so the emulated device never stands in.
process.env['MLA_CUDA_DEVICE'] = 'cuda';
