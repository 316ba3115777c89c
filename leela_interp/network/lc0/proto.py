"""lc0's ``net.proto`` schema, built at import time.

The message classes are created from a descriptor assembled here, so no ``protoc`` step and no
generated ``_pb2`` module is needed, and any installed ``protobuf`` runtime works. Field numbers,
types and enum values are those of lc0's ``proto/net.proto`` (package ``pblczero``); only the
messages that a network file uses are defined.

>>> from leela_interp.network.lc0.proto import Net
>>> net = Net(magic=0x1C0)
>>> Net.FromString(net.SerializeToString()).magic == 0x1C0
True
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_SCALARS = {
    "float": _F.TYPE_FLOAT,
    "uint32": _F.TYPE_UINT32,
    "int32": _F.TYPE_INT32,
    "fixed32": _F.TYPE_FIXED32,
    "bytes": _F.TYPE_BYTES,
    "string": _F.TYPE_STRING,
}

# Enums: name -> {value name: number}. Nested enums are written "Message.Enum".
ENUMS: dict[str, dict[str, int]] = {
    "Weights.Layer.Encoding": {
        "UNKNOWN_ENCODING": 0, "LINEAR16": 1, "FLOAT16": 2, "BFLOAT16": 3, "FLOAT32": 4,
    },
    "NetworkFormat.InputFormat": {
        "INPUT_UNKNOWN": 0,
        "INPUT_CLASSICAL_112_PLANE": 1,
        "INPUT_112_WITH_CASTLING_PLANE": 2,
        "INPUT_112_WITH_CANONICALIZATION": 3,
        "INPUT_112_WITH_CANONICALIZATION_HECTOPLIES": 4,
        "INPUT_112_WITH_CANONICALIZATION_HECTOPLIES_ARMAGEDDON": 132,
        "INPUT_112_WITH_CANONICALIZATION_V2": 5,
        "INPUT_112_WITH_CANONICALIZATION_V2_ARMAGEDDON": 133,
    },
    "NetworkFormat.OutputFormat": {"OUTPUT_UNKNOWN": 0, "OUTPUT_CLASSICAL": 1, "OUTPUT_WDL": 2},
    "NetworkFormat.NetworkStructure": {
        "NETWORK_UNKNOWN": 0,
        "NETWORK_CLASSICAL": 1,
        "NETWORK_SE": 2,
        "NETWORK_CLASSICAL_WITH_HEADFORMAT": 3,
        "NETWORK_SE_WITH_HEADFORMAT": 4,
        "NETWORK_ONNX": 5,
        "NETWORK_ATTENTIONBODY_WITH_HEADFORMAT": 6,
        "NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT": 7,
        "NETWORK_AB_LEGACY_WITH_MULTIHEADFORMAT": 134,
    },
    "NetworkFormat.PolicyFormat": {
        "POLICY_UNKNOWN": 0, "POLICY_CLASSICAL": 1, "POLICY_CONVOLUTION": 2, "POLICY_ATTENTION": 3,
    },
    "NetworkFormat.ValueFormat": {
        "VALUE_UNKNOWN": 0, "VALUE_CLASSICAL": 1, "VALUE_WDL": 2, "VALUE_PARAM": 3,
    },
    "NetworkFormat.MovesLeftFormat": {"MOVES_LEFT_NONE": 0, "MOVES_LEFT_V1": 1},
    "NetworkFormat.ActivationFunction": {
        "ACTIVATION_DEFAULT": 0, "ACTIVATION_MISH": 1, "ACTIVATION_RELU": 2, "ACTIVATION_NONE": 3,
        "ACTIVATION_TANH": 4, "ACTIVATION_SIGMOID": 5, "ACTIVATION_SELU": 6, "ACTIVATION_SWISH": 7,
        "ACTIVATION_RELU_2": 8, "ACTIVATION_SOFTMAX": 9,
    },
    "NetworkFormat.DefaultActivation": {"DEFAULT_ACTIVATION_RELU": 0, "DEFAULT_ACTIVATION_MISH": 1},
    "NetworkFormat.InputEmbeddingFormat": {
        "INPUT_EMBEDDING_NONE": 0, "INPUT_EMBEDDING_PE_MAP": 1, "INPUT_EMBEDDING_PE_DENSE": 2,
    },
    "Format.Encoding": {"UNKNOWN": 0, "LINEAR16": 1},
}

# Messages: name -> [(field, number, type, repeated)]. A type is a scalar name, an enum or a
# message name as written in ENUMS / MESSAGES.
_L = "Weights.Layer"
MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "EngineVersion": [("major", 1, "uint32", False), ("minor", 2, "uint32", False),
                      ("patch", 3, "uint32", False)],
    "Weights.Layer": [("min_val", 1, "float", False), ("max_val", 2, "float", False),
                      ("params", 3, "bytes", False),
                      ("encoding", 4, "Weights.Layer.Encoding", False),
                      ("dims", 5, "uint32", True)],
    "Weights.ConvBlock": [(n, i, _L, False) for i, n in enumerate(
        ["weights", "biases", "bn_means", "bn_stddivs", "bn_gammas", "bn_betas"], 1)],
    "Weights.SEunit": [(n, i, _L, False) for i, n in enumerate(["w1", "b1", "w2", "b2"], 1)],
    "Weights.Residual": [("conv1", 1, "Weights.ConvBlock", False),
                         ("conv2", 2, "Weights.ConvBlock", False),
                         ("se", 3, "Weights.SEunit", False)],
    "Weights.Smolgen": [(n, i, _L, False) for i, n in enumerate(
        ["compress", "dense1_w", "dense1_b", "ln1_gammas", "ln1_betas", "dense2_w", "dense2_b",
         "ln2_gammas", "ln2_betas"], 1)],
    "Weights.MHA": [(n, i, _L, False) for i, n in enumerate(
        ["q_w", "q_b", "k_w", "k_b", "v_w", "v_b", "dense_w", "dense_b"], 1)]
    + [("smolgen", 9, "Weights.Smolgen", False), ("rpe_q", 10, _L, False),
       ("rpe_k", 11, _L, False), ("rpe_v", 12, _L, False)],
    "Weights.FFN": [(n, i, _L, False) for i, n in enumerate(
        ["dense1_w", "dense1_b", "dense2_w", "dense2_b"], 1)],
    "Weights.EncoderLayer": [("mha", 1, "Weights.MHA", False), ("ln1_gammas", 2, _L, False),
                             ("ln1_betas", 3, _L, False), ("ffn", 4, "Weights.FFN", False),
                             ("ln2_gammas", 5, _L, False), ("ln2_betas", 6, _L, False)],
    "Weights.PolicyHead": [(n, i, _L, False) for i, n in enumerate(
        ["ip_pol_w", "ip_pol_b", "ip2_pol_w", "ip2_pol_b", "ip3_pol_w", "ip3_pol_b",
         "ip4_pol_w"], 1)]
    + [("pol_encoder", 8, "Weights.EncoderLayer", True), ("pol_headcount", 9, "uint32", False),
       ("policy1", 10, "Weights.ConvBlock", False), ("policy", 11, "Weights.ConvBlock", False)],
    "Weights.ValueHead": [(n, i, _L, False) for i, n in enumerate(
        ["ip_val_w", "ip_val_b", "ip1_val_w", "ip1_val_b", "ip2_val_w", "ip2_val_b",
         "ip_val_err_w", "ip_val_err_b", "ip_val_cat_w", "ip_val_cat_b"], 1)]
    + [("value", 11, "Weights.ConvBlock", False)],
    "Weights.PolicyHeadMap": [("key", 1, "string", False),
                              ("value", 2, "Weights.PolicyHead", False)],
    "Weights.PolicyHeads": [("ip_pol_w", 1, _L, False), ("ip_pol_b", 2, _L, False),
                            ("vanilla", 3, "Weights.PolicyHead", False),
                            ("optimistic_st", 4, "Weights.PolicyHead", False),
                            ("soft", 5, "Weights.PolicyHead", False),
                            ("opponent", 6, "Weights.PolicyHead", False),
                            ("policy_head_map", 7, "Weights.PolicyHeadMap", True)],
    "Weights.ValueHeadMap": [("key", 1, "string", False),
                             ("value", 2, "Weights.ValueHead", False)],
    "Weights.ValueHeads": [("winner", 1, "Weights.ValueHead", False),
                           ("q", 2, "Weights.ValueHead", False),
                           ("st", 3, "Weights.ValueHead", False),
                           ("value_head_map", 4, "Weights.ValueHeadMap", True)],
    "Weights": [
        ("input", 1, "Weights.ConvBlock", False), ("residual", 2, "Weights.Residual", True),
        ("policy", 3, "Weights.ConvBlock", False), ("ip_pol_w", 4, _L, False),
        ("ip_pol_b", 5, _L, False), ("value", 6, "Weights.ConvBlock", False),
        ("ip1_val_w", 7, _L, False), ("ip1_val_b", 8, _L, False), ("ip2_val_w", 9, _L, False),
        ("ip2_val_b", 10, _L, False), ("policy1", 11, "Weights.ConvBlock", False),
        ("moves_left", 12, "Weights.ConvBlock", False), ("ip1_mov_w", 13, _L, False),
        ("ip1_mov_b", 14, _L, False), ("ip2_mov_w", 15, _L, False), ("ip2_mov_b", 16, _L, False),
        ("ip2_pol_w", 17, _L, False), ("ip2_pol_b", 18, _L, False), ("ip3_pol_w", 19, _L, False),
        ("ip3_pol_b", 20, _L, False), ("pol_encoder", 21, "Weights.EncoderLayer", True),
        ("ip4_pol_w", 22, _L, False), ("pol_headcount", 24, "uint32", False),
        ("ip_emb_w", 25, _L, False), ("ip_emb_b", 26, _L, False),
        ("encoder", 27, "Weights.EncoderLayer", True), ("headcount", 28, "uint32", False),
        ("ip_val_w", 29, _L, False), ("ip_val_b", 30, _L, False), ("ip_mov_w", 31, _L, False),
        ("ip_mov_b", 32, _L, False), ("ip_mult_gate", 33, _L, False),
        ("ip_add_gate", 34, _L, False), ("smolgen_w", 35, _L, False),
        ("smolgen_b", 36, _L, False), ("ip_emb_preproc_w", 37, _L, False),
        ("ip_emb_preproc_b", 38, _L, False), ("ip_emb_ln_gammas", 39, _L, False),
        ("ip_emb_ln_betas", 40, _L, False), ("ip_emb_ffn", 41, "Weights.FFN", False),
        ("ip_emb_ffn_ln_gammas", 42, _L, False), ("ip_emb_ffn_ln_betas", 43, _L, False),
        ("value_heads", 44, "Weights.ValueHeads", False),
        ("policy_heads", 45, "Weights.PolicyHeads", False),
    ],
    "TrainingParams": [("training_steps", 1, "uint32", False),
                       ("learning_rate", 2, "float", False), ("mse_loss", 3, "float", False),
                       ("policy_loss", 4, "float", False), ("accuracy", 5, "float", False),
                       ("lc0_params", 6, "string", False)],
    "NetworkFormat": [
        ("input", 1, "NetworkFormat.InputFormat", False),
        ("output", 2, "NetworkFormat.OutputFormat", False),
        ("network", 3, "NetworkFormat.NetworkStructure", False),
        ("policy", 4, "NetworkFormat.PolicyFormat", False),
        ("value", 5, "NetworkFormat.ValueFormat", False),
        ("moves_left", 6, "NetworkFormat.MovesLeftFormat", False),
        ("default_activation", 7, "NetworkFormat.DefaultActivation", False),
        ("smolgen_activation", 8, "NetworkFormat.ActivationFunction", False),
        ("ffn_activation", 9, "NetworkFormat.ActivationFunction", False),
        ("input_embedding", 10, "NetworkFormat.InputEmbeddingFormat", False),
    ],
    "Format": [("weights_encoding", 1, "Format.Encoding", False),
               ("network_format", 2, "NetworkFormat", False)],
    "OnnxModel": [("model", 1, "bytes", False)],
    "Net": [("magic", 1, "fixed32", False), ("license", 2, "string", False),
            ("min_version", 3, "EngineVersion", False), ("format", 4, "Format", False),
            ("training_params", 5, "TrainingParams", False), ("weights", 10, "Weights", False),
            ("onnx_model", 11, "OnnxModel", False)],
}

_PACKAGE = "pblczero"


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="leela_interp_net.proto", package=_PACKAGE, syntax="proto2")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}

    def container(path: str):
        parent, _, _ = path.rpartition(".")
        return protos[parent].nested_type if parent else fdp.message_type

    for name in sorted(MESSAGES, key=lambda n: n.count(".")):  # parents before nested ones
        protos[name] = container(name).add(name=name.rpartition(".")[2])
    for name, values in ENUMS.items():
        parent, _, short = name.rpartition(".")
        enum = (protos[parent].enum_type if parent else fdp.enum_type).add(name=short)
        for value_name, number in values.items():
            enum.value.add(name=value_name, number=number)
    for name, fields in MESSAGES.items():
        for field_name, number, type_, repeated in fields:
            field = protos[name].field.add(
                name=field_name, number=number, label=_REP if repeated else _OPT)
            if type_ in _SCALARS:
                field.type = _SCALARS[type_]
            else:
                field.type = _F.TYPE_ENUM if type_ in ENUMS else _F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{type_}"
    return fdp


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_build_file())


def _message(name: str):
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


Net = _message("Net")
Weights = _message("Weights")
Layer = _message("Weights.Layer")
NetworkFormat = _message("NetworkFormat")
EngineVersion = _message("EngineVersion")

__all__ = ["Net", "Weights", "Layer", "NetworkFormat", "EngineVersion", "ENUMS", "MESSAGES"]
