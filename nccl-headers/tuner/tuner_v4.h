/* airamp: NCCL tuner plugin ABI, version 4 (NCCL 2.24 .. 2.27). */
#ifndef AIRAMP_NCCL_TUNER_V4_H
#define AIRAMP_NCCL_TUNER_V4_H

#include "../nccl_types.h"

/* v3 plus regBuff: nonzero when the user buffer is registered. */
typedef struct {
  const char* name;
  ncclResult_t (*init)(size_t nRanks, size_t nNodes, ncclDebugLogger_t logFunction, void** context);
  ncclResult_t (*getCollInfo)(void* context, ncclFunc_t collType, size_t nBytes, int numPipeOps, float** collCostTable,
                              int numAlgo, int numProto, int regBuff, int* nChannels);
  ncclResult_t (*destroy)(void* context);
} ncclTuner_v4_t;

#endif /* AIRAMP_NCCL_TUNER_V4_H */
