/* Host harness: reads samples from input.bin and writes results to output.bin through semihosting. */
#include <stdio.h>
#include "model.h"

int main(void) {
    FILE *fi = fopen("input.bin", "rb");
    FILE *fo = fopen("output.bin", "wb");
    if (!fi || !fo) return 2;
    for (;;) {
        for (int i = 0; i < BP_NUM_INPUTS; i++)
            if (fread(bp_input(i), 1, bp_input_bytes[i], fi) != bp_input_bytes[i]) goto done;
        bp_model_run();
        for (int i = 0; i < BP_NUM_OUTPUTS; i++)
            if (fwrite(bp_output(i), 1, bp_output_bytes[i], fo) != bp_output_bytes[i]) return 4;
    }
done:
    fclose(fi);
    fclose(fo);
    return 0;
}
