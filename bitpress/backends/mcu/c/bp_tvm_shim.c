/* Runtime side of bp_tvm_shim.h: the two kinds of calls TVM-generated kernels make besides the
 * micro-kernels.  Workspace is a stack (LIFO, like TVM's own CPU workspace pool) inside the arena slice
 * the memory plan gave the layer; nothing is allocated from a heap. */
#include "bp_tvm_shim.h"

uint8_t *bp_tvm_ws;
static uint32_t bp_tvm_ws_used;
const char *bp_tvm_error;

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t num_parts) {
    (void)kind;
    bp_tvm_error = num_parts > 0 ? parts[0] : "error";
}

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint, int dtype_bits_hint) {
    (void)device_type, (void)device_id, (void)dtype_code_hint, (void)dtype_bits_hint;
    void *p = bp_tvm_ws + bp_tvm_ws_used;
    bp_tvm_ws_used += (uint32_t)((nbytes + 15u) & ~15ull);
    return p;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
    (void)device_type, (void)device_id;
    bp_tvm_ws_used = (uint32_t)((uint8_t *)ptr - bp_tvm_ws);
    return 0;
}
