/*
 * QEMU harness of the export verification.  verify_inputs.h (generated) holds MODEL_N_INPUTS
 * test inputs as a const array in flash.  The first pass prints each output as a hex line
 * "o <bytes>"; model_repetitions - 1 further passes repeat the same inferences silently, so
 * that two images differing only in that constant (read from memory: the code is the same)
 * give the instructions of MODEL_N_INPUTS inferences as the difference of their counts.
 * Finally "stack <bytes>" reports the stack high-water mark.
 */
#include "model_glue.h"
#include "semihost.h"
#include "verify_inputs.h"

#ifndef MODEL_REPETITIONS
#define MODEL_REPETITIONS 1
#endif

static volatile const uint32_t model_repetitions = MODEL_REPETITIONS;
static int8_t output[MODEL_OUTPUT_SIZE];

int main(void)
{
    uint32_t rep, i, reps = model_repetitions;
    for (i = 0; i < MODEL_N_INPUTS; ++i) {
        if (model_run(model_inputs[i], output) != 0) {
            return 2;
        }
        sh_put_hex_line("o ", output, MODEL_OUTPUT_SIZE);
    }
    for (rep = 1; rep < reps; ++rep) {
        for (i = 0; i < MODEL_N_INPUTS; ++i) {
            if (model_run(model_inputs[i], output) != 0) {
                return 2;
            }
        }
    }
    sh_put_uint_line("stack ", sh_stack_used());
    return 0;
}
