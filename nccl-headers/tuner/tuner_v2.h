/* airamp: NCCL tuner plugin ABI, version 2 (NCCL 2.21). */
#ifndef AIRAMP_NCCL_TUNER_V2_H
#define AIRAMP_NCCL_TUNER_V2_H

#include "../nccl_types.h"

/* The tuner picks algorithm/protocol directly (NCCL_ALGO_* / NCCL_PROTO_*). */
typedef struct {
  const char* name;
  ncclResult_t (*init)(size_t nRanks, size_t nNodes, ncclDebugLogger_t logFunction, void** context);
  ncclResult_t (*getCollInfo)(void* context, ncclFunc_t collType, size_t nBytes, int collNetSupport, int nvlsSupport,
                              int numPipeOps, int* algorithm, int* protocol, int* nChannels);
  ncclResult_t (*destroy)(void* context);
} ncclTuner_v2_t;

#endif /* AIRAMP_NCCL_TUNER_V2_H */
