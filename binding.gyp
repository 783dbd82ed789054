{
  "targets": [
    {
      "target_name": "mla_cuda",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake_build",
          "message": "Building mla_cuda.node with CMake (scripts/build-native.mjs)",
          "inputs": ["<(module_root_dir)/CMakeLists.txt"],
          "outputs": ["<(module_root_dir)/build/Release/mla_cuda.node"],
          "action": ["node", "<(module_root_dir)/scripts/build-native.mjs", "--from-gyp"]
        }
      ]
    }
  ]
}
