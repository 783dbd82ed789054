// Stand-in for <cuda_runtime.h> in the emulated-device build (this folder precedes the CUDA
// include directory there): the host runtime API plus what nvcc would add for device code.
#pragma once
#include "emu/device.h"
