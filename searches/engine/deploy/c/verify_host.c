/*
 * Host harness of the export verification: runs the model on every input of a binary file
 * (MODEL_INPUT_SIZE int8 bytes each, HWC) and writes the MODEL_OUTPUT_SIZE int8 logits of
 * each to another file.  model_glue.h (generated) includes the model header and maps the
 * model's names to MODEL_INPUT_SIZE, MODEL_OUTPUT_SIZE and model_run.
 *
 * Usage: verify_host INPUTS.bin OUTPUTS.bin
 */
#include <stdio.h>

#include "model_glue.h"

int main(int argc, char **argv)
{
    static int8_t input[MODEL_INPUT_SIZE];
    static int8_t output[MODEL_OUTPUT_SIZE];
    FILE *in, *out;
    long count = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUTS.bin OUTPUTS.bin\n", argv[0]);
        return 2;
    }
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL) {
        perror("verify_host");
        return 2;
    }
    while (fread(input, 1, sizeof input, in) == sizeof input) {
        int status = model_run(input, output);
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
    if (ferror(in) || fclose(in) != 0 || fclose(out) != 0) {
        perror("verify_host");
        return 2;
    }
    return 0;
}
