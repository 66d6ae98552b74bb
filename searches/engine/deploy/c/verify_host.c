/*
 * Host harness of the export verification: reads float inputs from a binary file
 * (MODEL_INPUT_SIZE little-endian float32 values each, HWC), quantises each with the header's
 * own quantiser, runs the model, and writes the MODEL_OUTPUT_SIZE int8 logits of each to one
 * file and the quantised int8 input to another.  model_glue.h (generated) includes the model
 * header and maps its names to MODEL_INPUT_SIZE, MODEL_OUTPUT_SIZE, model_quantize_input and
 * model_run.
 *
 * Usage: verify_host INPUTS.f32 OUTPUTS.bin QUANTISED.bin
 */
#include <stdio.h>

#include "model_glue.h"

int main(int argc, char **argv)
{
    static float real[MODEL_INPUT_SIZE];
    static int8_t input[MODEL_INPUT_SIZE];
    static int8_t output[MODEL_OUTPUT_SIZE];
    FILE *in, *out, *quantised;
    long count = 0;
    if (argc != 4) {
        fprintf(stderr, "usage: %s INPUTS.f32 OUTPUTS.bin QUANTISED.bin\n", argv[0]);
        return 2;
    }
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    quantised = fopen(argv[3], "wb");
    if (in == NULL || out == NULL || quantised == NULL) {
        perror("verify_host");
        return 2;
    }
    while (fread(real, sizeof real[0], MODEL_INPUT_SIZE, in) == MODEL_INPUT_SIZE) {
        int status;
        model_quantize_input(real, input);
        if (fwrite(input, 1, sizeof input, quantised) != sizeof input) {
            perror("verify_host: write");
            return 2;
        }
        status = model_run(input, output);
        if (status != 0) {
            fprintf(stderr, "model_run returned %d on input %ld\n", status, count);
            return 3;
        }
        if (fwrite(output, 1, sizeof output, out) != sizeof output) {
            perror("verify_host: write");
            return 2;
        }
        count++;
    }
    if (ferror(in) || fclose(in) != 0 || fclose(out) != 0 || fclose(quantised) != 0) {
        perror("verify_host");
        return 2;
    }
    return 0;
}
