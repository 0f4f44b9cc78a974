/* airamp: NCCL tuner plugin ABI, version 6 (NCCL 2.30+). */
#ifndef AIRAMP_NCCL_TUNER_V6_H
#define AIRAMP_NCCL_TUNER_V6_H

#include "tuner_v5.h"

/* Helper structs are unchanged from v5. */
typedef ncclTunerConstants_v5_t ncclTunerConstants_v6_t;
typedef ncclNvlDomainInfo_v5_t ncclNvlDomainInfo_v6_t;

/* v5 plus getChunkSize: the tuner may override the pipeline chunk size. */
typedef struct {
  const char* name;
  ncclResult_t (*init)(void** ctx, uint64_t commId, size_t nRanks, size_t nNodes, ncclDebugLogger_t logFunction,
                       ncclNvlDomainInfo_v6_t* nvlDomainInfo, ncclTunerConstants_v6_t* constants);
  ncclResult_t (*getCollInfo)(void* context, ncclFunc_t collType, size_t nBytes, int numPipeOps, float** collCostTable,
                              int numAlgo, int numProto, int regBuff, int* nChannels);
  ncclResult_t (*finalize)(void* context);
  ncclResult_t (*getChunkSize)(void* context, ncclFunc_t collType, size_t nBytes, int algo, int proto, int nChannels,
                               size_t* chunkSize);
} ncclTuner_v6_t;

#endif /* AIRAMP_NCCL_TUNER_V6_H */
