/* bitpress shim: stands in for TVM's tvm/runtime/c_backend_api.h so TVM's "c" target output builds bare-metal (see bp_tvm_shim.h). */
#include "bp_tvm_shim.h"
