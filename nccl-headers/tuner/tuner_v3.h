/* airamp: NCCL tuner plugin ABI, version 3 (NCCL 2.22 .. 2.23). */
#ifndef AIRAMP_NCCL_TUNER_V3_H
#define AIRAMP_NCCL_TUNER_V3_H

#include "../nccl_types.h"

/* The tuner edits a cost table: collCostTable is really float[numAlgo][numProto]
 * passed as float**; lower cost wins, NCCL_ALGO_PROTO_IGNORE disables a pair. */
typedef struct {
  const char* name;
  ncclResult_t (*init)(size_t nRanks, size_t nNodes, ncclDebugLogger_t logFunction, void** context);
  ncclResult_t (*getCollInfo)(void* context, ncclFunc_t collType, size_t nBytes, int numPipeOps, float** collCostTable,
                              int numAlgo, int numProto, int* nChannels);
  ncclResult_t (*destroy)(void* context);
} ncclTuner_v3_t;

#endif /* AIRAMP_NCCL_TUNER_V3_H */
