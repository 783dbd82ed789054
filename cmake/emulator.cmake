# The emulated-device addon (csrc/emu, docs/emulator.md): the binding, runtime.cu and every kernel
# compiled as host C++ with -DMLA_EMULATE against the CUDA toolkit's headers, so CI and machines
# without a GPU run the real kernels on the CPU. Loaded only when asked for (MLA_CUDA_DEVICE).
# Included from CMakeLists.txt; returns quietly where it cannot be built.
if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  message(STATUS "mla-cuda: the emulated device needs x86-64 (fiber switch); not built on ${CMAKE_SYSTEM_PROCESSOR}")
  return()
endif()

set(MLA_CUDA_INCLUDE_HINTS ${CUDAToolkit_INCLUDE_DIRS})
if(CMAKE_CUDA_COMPILER)
  get_filename_component(MLA_NVCC_DIR "${CMAKE_CUDA_COMPILER}" DIRECTORY)
  list(APPEND MLA_CUDA_INCLUDE_HINTS "${MLA_NVCC_DIR}/../include")
endif()
foreach(v CUDA_PATH CUDA_HOME CUDA_ROOT)
  if(DEFINED ENV{${v}})
    list(APPEND MLA_CUDA_INCLUDE_HINTS "$ENV{${v}}/include")
  endif()
endforeach()
file(GLOB MLA_CUDA_VERSIONED_INCLUDES /usr/local/cuda-*/include)
list(SORT MLA_CUDA_VERSIONED_INCLUDES COMPARE NATURAL ORDER DESCENDING)
find_path(MLA_CUDA_INCLUDE_DIR cuda_runtime_api.h
  HINTS ${MLA_CUDA_INCLUDE_HINTS}
  PATHS /usr/local/cuda/include ${MLA_CUDA_VERSIONED_INCLUDES})
if(NOT MLA_CUDA_INCLUDE_DIR OR NOT EXISTS "${MLA_CUDA_INCLUDE_DIR}/cuda_bf16.h")
  message(STATUS "mla-cuda: no CUDA toolkit headers found; the emulated device is not built "
    "(its tests will skip with that reason)")
  return()
endif()

set(MLA_EMU_TARGET mla_cuda_emulator)
if(MLA_EMU_SANITIZE STREQUAL "address")
  set(MLA_EMU_TARGET mla_cuda_emulator_asan)
elseif(MLA_EMU_SANITIZE STREQUAL "thread")
  set(MLA_EMU_TARGET mla_cuda_emulator_tsan)
elseif(MLA_EMU_SANITIZE)
  message(FATAL_ERROR "MLA_EMU_SANITIZE must be address or thread, not ${MLA_EMU_SANITIZE}")
endif()

# The .cu files are also CUDA sources of the real addon, and a source file has one language per
# directory; tiny .cc wrappers that include them give the emulator its own copies.
file(GLOB MLA_EMU_CU_SOURCES CONFIGURE_DEPENDS "${CMAKE_SOURCE_DIR}/csrc/kernels/*.cu" "${CMAKE_SOURCE_DIR}/csrc/runtime/*.cu")
set(MLA_EMU_KERNEL_WRAPPERS "")
foreach(cu ${MLA_EMU_CU_SOURCES})
  get_filename_component(stem "${cu}" NAME_WE)
  set(wrapper "${CMAKE_BINARY_DIR}/emu-sources/${stem}.cc")
  set(content "#include \"${cu}\"\n")
  if(EXISTS "${wrapper}")
    file(READ "${wrapper}" old)
  else()
    set(old "")
  endif()
  if(NOT old STREQUAL content)
    file(WRITE "${wrapper}" "${content}")
  endif()
  list(APPEND MLA_EMU_KERNEL_WRAPPERS "${wrapper}")
endforeach()
file(GLOB MLA_EMU_CORE_SOURCES CONFIGURE_DEPENDS "${CMAKE_SOURCE_DIR}/csrc/emu/*.cc")
file(GLOB MLA_EMU_HOST_SOURCES CONFIGURE_DEPENDS "${CMAKE_SOURCE_DIR}/csrc/binding/*.cc" "${CMAKE_SOURCE_DIR}/csrc/host/*.cc")

add_library(${MLA_EMU_TARGET} SHARED ${MLA_EMU_HOST_SOURCES} ${MLA_EMU_KERNEL_WRAPPERS} ${MLA_EMU_CORE_SOURCES} ${CMAKE_JS_SRC})
# compile_commands.json: the mutation tests recompile one kernel with exactly these flags.
set_target_properties(${MLA_EMU_TARGET} PROPERTIES PREFIX "" SUFFIX ".node" CXX_VISIBILITY_PRESET hidden
  EXPORT_COMPILE_COMMANDS ON)
if(MLA_OUTPUT_DIR)
  set_target_properties(${MLA_EMU_TARGET} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${MLA_OUTPUT_DIR}/emulator")
endif()
# csrc/emu/include first: its cuda_runtime.h stands in for the toolkit's.
target_include_directories(${MLA_EMU_TARGET} PRIVATE "${CMAKE_SOURCE_DIR}/csrc/emu/include" "${CMAKE_SOURCE_DIR}/csrc"
  ${CMAKE_JS_INC} "${MLA_CUDA_INCLUDE_DIR}")
target_compile_definitions(${MLA_EMU_TARGET} PRIVATE MLA_EMULATE=1 MLA_WITH_CUDA=1 MLA_HAS_SM90A=1
  MLA_CUDA_ARCHS="emulated" MLA_CUDA_COMPILER_VERSION="${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}"
  NAPI_VERSION=8 NODE_ADDON_API_CPP_EXCEPTIONS NODE_API_NO_EXTERNAL_BUFFERS_ALLOWED)
# nvcc's qualifiers reach g++ as unknown attributes; #pragma unroll as an unknown pragma; -Wno-psabi:
# the sm_90a kernels take a 64-byte aligned CUtensorMap by value (g++ notes an ABI change of 4.6).
target_compile_options(${MLA_EMU_TARGET} PRIVATE -Wno-attributes -Wno-unknown-pragmas -Wno-psabi)
target_link_libraries(${MLA_EMU_TARGET} PRIVATE ${CMAKE_JS_LIB})

if(MLA_EMU_SANITIZE STREQUAL "address")
  target_compile_options(${MLA_EMU_TARGET} PRIVATE -O1 -g -fsanitize=address -fno-omit-frame-pointer)
  target_link_options(${MLA_EMU_TARGET} PRIVATE -fsanitize=address)
elseif(MLA_EMU_SANITIZE STREQUAL "thread")
  # Only the kernels are instrumented. The scheduler states CUDA's happens-before edges to TSan
  # itself (MLA_EMU_TSAN), so what TSan sees is exactly the kernels' own accesses.
  set_source_files_properties(${MLA_EMU_KERNEL_WRAPPERS} PROPERTIES COMPILE_OPTIONS "-fsanitize=thread;-O1;-g")
  target_compile_definitions(${MLA_EMU_TARGET} PRIVATE MLA_EMU_TSAN=1)
  target_link_options(${MLA_EMU_TARGET} PRIVATE -fsanitize=thread)
endif()  # not stripped: symbols make profiles and the rare crash readable
message(STATUS "mla-cuda: emulated-device addon ${MLA_EMU_TARGET} (CUDA headers in ${MLA_CUDA_INCLUDE_DIR})")
