# Issue #9's acceptance for `amanuensis quantize`: the kit's quantized models were made by
# whisper.cpp's quantizer from micro.en-f16, so quantizing micro.en-f16 with the CLI must
# give files whose sha256 is the one in the kit README's model table (read from the README,
# not copied here).
# usage: cmake -DCLI=... -DSHARED_DIR=... -DOUT_DIR=... -P quantize_kit_models.cmake
file(MAKE_DIRECTORY ${OUT_DIR})
file(STRINGS ${SHARED_DIR}/conformance/README.md rows REGEX "^\\| micro\\.en-q[0-9]_[0-9]\\.bin \\|")
list(LENGTH rows count)
if(count LESS 3)
  message(FATAL_ERROR "the kit README lists ${count} quantized micro.en models, expected q8_0, q5_1 and q4_0")
endif()
foreach(row ${rows})
  string(REGEX MATCH "^\\| micro\\.en-(q[0-9]_[0-9])\\.bin \\|" _ "${row}")
  set(type ${CMAKE_MATCH_1})
  string(REGEX MATCH "([0-9a-f]+) \\|$" _ "${row}")
  set(expected ${CMAKE_MATCH_1})
  string(LENGTH "${expected}" length)
  if(NOT length EQUAL 64)
    message(FATAL_ERROR "no sha256 in the README row: ${row}")
  endif()
  set(out ${OUT_DIR}/micro.en-${type}.bin)
  file(REMOVE ${out})
  execute_process(COMMAND ${CLI} quantize ${SHARED_DIR}/conformance/models/micro.en-f16.bin ${out} ${type}
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "amanuensis quantize ... ${type} failed (${rc}): ${err}")
  endif()
  file(SHA256 ${out} have)
  if(NOT have STREQUAL expected)
    message(FATAL_ERROR "micro.en-${type}.bin: sha256 ${have}, the kit README says ${expected}")
  endif()
  message(STATUS "micro.en-${type}.bin: sha256 ${have} (as in the kit README)")
endforeach()
