/* Linux driver: `./model INPUT OUTPUT` reads samples (the inputs' raw bytes, back to back, as model.h
 * sizes them) from INPUT until it ends, runs the model on each, and writes the outputs' raw bytes to OUTPUT.
 * "-" means stdin / stdout.  Exit status: 0 ok, 2 cannot open a file, 3 a partial sample, 4 write error. */
#include <stdio.h>
#include <string.h>
#include "model.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT OUTPUT  (raw sample bytes in, raw output bytes out; - for stdin/stdout)\n", argv[0]);
        return 1;
    }
    FILE *fi = strcmp(argv[1], "-") ? fopen(argv[1], "rb") : stdin;
    FILE *fo = strcmp(argv[2], "-") ? fopen(argv[2], "wb") : stdout;
    if (!fi || !fo) {
        perror("open");
        return 2;
    }
    for (;;) {
        for (int i = 0; i < BP_NUM_INPUTS; i++) {
            size_t got = fread(bp_input(i), 1, bp_input_bytes[i], fi);
            if (got != bp_input_bytes[i]) {
                if (got == 0 && i == 0) goto done;
                fprintf(stderr, "input %d: read %zu of %u bytes\n", i, got, (unsigned)bp_input_bytes[i]);
                return 3;
            }
        }
        bp_model_run();
        for (int i = 0; i < BP_NUM_OUTPUTS; i++)
            if (fwrite(bp_output(i), 1, bp_output_bytes[i], fo) != bp_output_bytes[i]) return 4;
    }
done:
    if (fi != stdin) fclose(fi);
    if (fclose(fo) != 0) return 4;
    return 0;
}
