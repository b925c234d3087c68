/* asrq: command line front of an exported model.
 *
 *   asrq model.bin input.q8 [-t threads] [--logits out.bin]
 *   asrq --isa      (the kernel family this CPU runs: avx512-vnni, avx-vnni, avx2 or portable;
 *                    $ASRQ_ISA forces one)
 *
 * input.q8: "ASQ8", then three little-endian int32 (features F, frames T, valid frames L), then
 * F*T int8 values [F][T] (the quantized log-mel; `intasr.program.c_backend.write_input`).
 * Prints the kernel family that ran ("kernels: ..."), the greedy CTC tokens (frame argmax, repeats merged, blanks dropped) as class indices on
 * one line ("tokens: ..."), and their text ("text: ..."). --logits writes "ASL8", int32 classes,
 * out frames, valid out frames, then the int64 logits [classes][out frames], little-endian.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asrq.h"
#include "asrq_kernels.h"

static int read_i32(FILE *f, long *v) {
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) return 1;
    *v = (long)(int32_t)((uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24));
    return 0;
}

static void write_i32(FILE *f, long v) {
    uint32_t u = (uint32_t)v;
    unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16), (unsigned char)(u >> 24)};
    fwrite(b, 1, 4, f);
}

int main(int argc, char **argv) {
    const char *model = NULL, *input = NULL, *dump = NULL;
    int threads = 1;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--isa")) {
            char err[256];
            if (asrq_select_isa(err, sizeof err)) { fprintf(stderr, "asrq: %s\n", err); return 2; }
            printf("%s\n", asrq_isa());
            return 0;
        }
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--logits") && i + 1 < argc) dump = argv[++i];
        else if (!model) model = argv[i];
        else if (!input) input = argv[i];
        else { fprintf(stderr, "asrq: unexpected argument %s\n", argv[i]); return 2; }
    }
    if (!model || !input) {
        fprintf(stderr, "usage: asrq model.bin input.q8 [-t threads] [--logits out.bin]\n");
        return 2;
    }
    FILE *f = fopen(input, "rb");
    if (!f) { fprintf(stderr, "asrq: cannot open %s\n", input); return 2; }
    char magic[4];
    long F, T, L;
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "ASQ8", 4) || read_i32(f, &F) || read_i32(f, &T) ||
        read_i32(f, &L) || F != asrq_features() || T < 1 || L < 1 || L > T) {
        fprintf(stderr, "asrq: %s is not a quantized input of this model (ASQ8 header, %ld features)\n", input,
                asrq_features());
        fclose(f);
        return 2;
    }
    /* the F x T values must be in the file before anything is allocated for them: a header
     * claiming 2^31 frames in a 16-byte file is refused here, not by a failed 128 GB malloc */
    long here = ftell(f), end = -1;
    if (here >= 0 && fseek(f, 0, SEEK_END) == 0) end = ftell(f);
    if (end < 0 || fseek(f, here, SEEK_SET) != 0 || T > (end - here) / F) {
        fprintf(stderr, "asrq: %s is truncated (header: %ld x %ld values)\n", input, F, T);
        fclose(f);
        return 2;
    }
    int8_t *q = malloc((size_t)(F * T));
    if (!q || fread(q, 1, (size_t)(F * T), f) != (size_t)(F * T)) {
        fprintf(stderr, "asrq: %s is truncated\n", input);
        free(q);
        fclose(f);
        return 2;
    }
    fclose(f);
    asrq_model *m = asrq_load(model, T, threads);
    if (!m) { fprintf(stderr, "asrq: %s\n", asrq_last_error()); free(q); return 2; }
    const long C = asrq_classes(), To = asrq_out_frames(T);
    if (To < 1) {
        fprintf(stderr, "asrq: %s: %s\n", input, asrq_error(ASRQ_ERR_SHORT));
        free(q);
        asrq_free(m);
        return 2;
    }
    int64_t *logits = malloc(sizeof(int64_t) * (size_t)(C * To));
    long Lo = 0;
    int rc = logits ? asrq_run(m, q, T, L, logits, &Lo) : -1;
    long *tokens = rc ? NULL : malloc(sizeof(long) * (size_t)(Lo + 1));
    if (rc || !tokens) {
        fprintf(stderr, "asrq: %s: %s\n", input, rc <= 0 ? "out of memory" : asrq_error(rc));
        free(logits);
        free(q);
        asrq_free(m);
        return 2;
    }
    long prev = -1, n = 0;
    for (long t = 0; t < Lo; ++t) {
        long best = 0;
        for (long c = 1; c < C; ++c)
            if (logits[c * To + t] > logits[best * To + t]) best = c;  /* first maximum, as numpy argmax */
        if (best != prev && best != C - 1) tokens[n++] = best;
        prev = best;
    }
    printf("kernels: %s\n", asrq_isa());
    printf("tokens:");
    for (long i = 0; i < n; ++i) printf(" %ld", tokens[i]);
    printf("\ntext: ");
    for (long i = 0; i < n; ++i) {
        const char *s = asrq_label(tokens[i]);
        fputs(s ? s : "?", stdout);
    }
    printf("\n");
    if (dump) {
        FILE *o = fopen(dump, "wb");
        if (!o) {
            fprintf(stderr, "asrq: cannot write %s\n", dump);
            free(tokens);
            free(logits);
            free(q);
            asrq_free(m);
            return 2;
        }
        fwrite("ASL8", 1, 4, o);
        write_i32(o, C);
        write_i32(o, To);
        write_i32(o, Lo);
        for (long i = 0; i < C * To; ++i) {
            uint64_t u = (uint64_t)logits[i];
            unsigned char b[8];
            for (int k = 0; k < 8; ++k) b[k] = (unsigned char)(u >> (8 * k));
            fwrite(b, 1, 8, o);
        }
        fclose(o);
    }
    free(tokens);
    free(logits);
    free(q);
    asrq_free(m);
    return 0;
}
