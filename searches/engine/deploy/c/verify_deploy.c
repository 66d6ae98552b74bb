/*
 * The smallest Cortex-M application around a model: one input buffer, one output buffer,
 * one call.  The export verification links it with the profile's flash and SRAM as memory
 * regions and reports its arm-none-eabi-size numbers as the model's deployed footprint.
 */
#include "model_glue.h"

static int8_t input[MODEL_INPUT_SIZE];
static int8_t output[MODEL_OUTPUT_SIZE];

int main(void)
{
    /* The input would come from a sensor: tell the compiler the buffer may hold anything. */
    __asm__ volatile("" : : "r"(input) : "memory");
    return model_run(input, output) == 0 && output[0] != 127 ? 0 : 1;
}
