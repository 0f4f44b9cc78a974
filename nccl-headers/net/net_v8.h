/* airamp: NCCL net / collnet plugin ABI, version 8 (NCCL 2.20 .. 2.23 default). */
#ifndef AIRAMP_NCCL_NET_V8_H
#define AIRAMP_NCCL_NET_V8_H

#include "../nccl_types.h"

/* Per-device properties filled by getProperties. */
typedef struct {
  char* name;                      /* device name, for logs */
  char* pciPath;                   /* sysfs PCI path */
  uint64_t guid;                   /* unique NIC id (shared by its PCI functions) */
  int ptrSupport;                  /* NCCL_PTR_* mask */
  int regIsGlobal;                 /* 1 if an MR is usable on every comm */
  int speed;                       /* Mbit/s */
  int port;                        /* port number */
  float latency;                   /* microseconds */
  int maxComms;                    /* max comms per device */
  int maxRecvs;                    /* max receives grouped in one irecv */
  ncclNetDeviceType netDeviceType; /* offload kind */
  int netDeviceVersion;            /* offload version */
} ncclNetProperties_v8_t;

/* Point-to-point transport. Sizes are int in v8. */
typedef struct {
  const char* name;
  ncclResult_t (*init)(ncclDebugLogger_t logFunction);
  ncclResult_t (*devices)(int* ndev);
  ncclResult_t (*getProperties)(int dev, ncclNetProperties_v8_t* props);
  /* Fill `handle` (<= NCCL_NET_HANDLE_MAXSIZE bytes) and create a listener. */
  ncclResult_t (*listen)(int dev, void* handle, void** listenComm);
  /* Non-blocking: return success with *sendComm == NULL until connected. */
  ncclResult_t (*connect)(int dev, void* handle, void** sendComm, ncclNetDeviceHandle_v8_t** sendDevComm);
  /* Non-blocking: return success with *recvComm == NULL until accepted. */
  ncclResult_t (*accept)(void* listenComm, void** recvComm, ncclNetDeviceHandle_v8_t** recvDevComm);
  ncclResult_t (*regMr)(void* comm, void* data, size_t size, int type, void** mhandle);
  ncclResult_t (*regMrDmaBuf)(void* comm, void* data, size_t size, int type, uint64_t offset, int fd, void** mhandle);
  ncclResult_t (*deregMr)(void* comm, void* mhandle);
  /* Return success with *request == NULL to mean "try again later". */
  ncclResult_t (*isend)(void* sendComm, void* data, int size, int tag, void* mhandle, void** request);
  ncclResult_t (*irecv)(void* recvComm, int n, void** data, int* sizes, int* tags, void** mhandles, void** request);
  /* Make received GPU data visible to the GPU. */
  ncclResult_t (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles, void** request);
  /* Poll a request; `sizes` may be NULL. */
  ncclResult_t (*test)(void* request, int* done, int* sizes);
  ncclResult_t (*closeSend)(void* sendComm);
  ncclResult_t (*closeRecv)(void* recvComm);
  ncclResult_t (*closeListen)(void* listenComm);
  ncclResult_t (*getDeviceMr)(void* comm, void* mhandle, void** dptr_mhandle);
  ncclResult_t (*irecvConsumed)(void* recvComm, int n, void* request);
} ncclNet_v8_t;

/* Scatter-gather entry for collnet allgather / reducescatter. */
typedef struct {
  void* mhandle;
  void* address;
  uint32_t size;
} ncclNetSGE_v8_t;

/* Collective (in-network reduction) transport. */
typedef struct {
  const char* name;
  ncclResult_t (*init)(ncclDebugLogger_t logFunction);
  /* ndev == 0 allows the remaining members to be NULL. */
  ncclResult_t (*devices)(int* ndev);
  ncclResult_t (*getProperties)(int dev, ncclNetProperties_v8_t* props);
  ncclResult_t (*listen)(int dev, void* handle, void** listenComm);
  /* Join a group from every rank's listen handle. */
  ncclResult_t (*connect)(void* handles[], int nranks, int rank, void* listenComm, void** collComm);
  /* *supported = 1 if (dataType, redOp) can be reduced in the network. */
  ncclResult_t (*reduceSupport)(ncclDataType_t dataType, ncclRedOp_t redOp, int* supported);
  ncclResult_t (*regMr)(void* collComm, void* data, size_t size, int type, void** mhandle);
  ncclResult_t (*regMrDmaBuf)(void* collComm, void* data, size_t size, int type, uint64_t offset, int fd,
                              void** mhandle);
  ncclResult_t (*deregMr)(void* collComm, void* mhandle);
  ncclResult_t (*iallreduce)(void* collComm, void* sendData, void* recvData, int count, ncclDataType_t dataType,
                             ncclRedOp_t redOp, void* sendMhandle, void* recvMhandle, void** request);
  ncclResult_t (*iallgather)(void* collComm, void* sendData, int nRecvParts, ncclNetSGE_v8_t* recvParts,
                             size_t bytesPerRank, size_t windowOffset, size_t windowBytes, void* sendMhandle,
                             void** request);
  ncclResult_t (*ireducescatter)(void* collComm, int nSendParts, ncclNetSGE_v8_t* sendParts, void* recvData,
                                 size_t bytesPerRank, size_t windowOffset, size_t windowBytes, ncclDataType_t dataType,
                                 ncclRedOp_t redOp, void* recvMhandle, void** request);
  ncclResult_t (*iflush)(void* collComm, void* data, int size, void* mhandle, void** request);
  ncclResult_t (*test)(void* request, int* done, int* size);
  ncclResult_t (*closeColl)(void* collComm);
  ncclResult_t (*closeListen)(void* listenComm);
} ncclCollNet_v8_t;

#endif /* AIRAMP_NCCL_NET_V8_H */
