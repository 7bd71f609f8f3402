# Regenerates the conformance models that are not shipped, and the tests' own, and checks
# their sha256.
file(MAKE_DIRECTORY ${OUT_DIR})
set(TOOL ${SHARED_DIR}/tools/synth_model.py)

function(generate file expected_sha)
  set(out ${OUT_DIR}/${file})
  if(EXISTS ${out})
    file(SHA256 ${out} have)
    if(have STREQUAL expected_sha)
      return()
    endif()
  endif()
  execute_process(COMMAND python3 ${TOOL} ${ARGN} -q -o ${out} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "synth_model.py failed for ${file}")
  endif()
  file(SHA256 ${out} have)
  if(NOT have STREQUAL expected_sha)
    message(FATAL_ERROR "${file}: sha256 ${have}, the conformance README says ${expected_sha}")
  endif()
  message(STATUS "generated ${file} (sha256 ok)")
endfunction()

generate(micro.en-f32.bin 6c81764db1b4d614d69595b5210ef53cff2d66b4736acbea08df1c7d3fcc242c
         --preset micro.en --seed 1 --ftype f32)
generate(micro3.en-f16.bin ec23f89798b2be51dbd6d5d238990a7fecd985bbefe0973cdcefb6c31fd5c9d1
         --preset micro.en --seed 1 --ftype f16 --n-text-layer 3)
# Not in the kit's README: the multi-model server tests serve a second micro model, the same
# shape as micro.en-f16 with other random weights (so other tokens).
generate(micro.en-seed2-f16.bin 62ba910eacc9f0ee7c0b74e1d5cb9f35229e4d3d5d07db431c94db2f9bcd4edf
         --preset micro.en --seed 2 --ftype f16)
