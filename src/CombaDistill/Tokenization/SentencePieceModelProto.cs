using Google.Protobuf;

namespace CombaDistill.Tokenization;

/// <summary>
/// Writes a SentencePiece <c>tokenizer.model</c> (the <c>ModelProto</c> message of
/// sentencepiece_model.proto) in protobuf wire format, for a byte-fallback BPE vocabulary with
/// Llama's normalization: identity rules, a dummy-prefix space, spaces escaped as "▁", extra
/// whitespace kept. Only the fields a loader needs are written.
/// </summary>
internal static class SentencePieceModelProto
{
    public enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

    public readonly record struct Piece(string Text, float Score, PieceType Type);

    // Field numbers from sentencepiece_model.proto.
    const int ModelPieces = 1, ModelTrainerSpec = 2, ModelNormalizerSpec = 3;
    const int PieceText = 1, PieceScore = 2, PieceTypeField = 3;
    const int TrainerModelType = 3, TrainerVocabSize = 4, TrainerByteFallback = 35;
    const int TrainerUnkId = 40, TrainerBosId = 41, TrainerEosId = 42, TrainerPadId = 43;
    const int NormalizerName = 1, NormalizerAddDummyPrefix = 3, NormalizerRemoveExtraWhitespaces = 4, NormalizerEscapeWhitespaces = 5;
    const int ModelTypeBpe = 2;

    public static byte[] Serialize(IReadOnlyList<Piece> pieces, int unkId, int bosId, int eosId)
    {
        return Message(model =>
        {
            foreach (var piece in pieces)
                WriteMessage(model, ModelPieces, p =>
                {
                    WriteString(p, PieceText, piece.Text);
                    p.WriteTag(PieceScore, WireFormat.WireType.Fixed32);
                    p.WriteFloat(piece.Score);
                    WriteInt32(p, PieceTypeField, (int)piece.Type);
                });
            WriteMessage(model, ModelTrainerSpec, t =>
            {
                WriteInt32(t, TrainerModelType, ModelTypeBpe);
                WriteInt32(t, TrainerVocabSize, pieces.Count);
                WriteBool(t, TrainerByteFallback, true);
                WriteInt32(t, TrainerUnkId, unkId);
                WriteInt32(t, TrainerBosId, bosId);
                WriteInt32(t, TrainerEosId, eosId);
                WriteInt32(t, TrainerPadId, -1);
            });
            WriteMessage(model, ModelNormalizerSpec, n =>
            {
                WriteString(n, NormalizerName, "identity");
                WriteBool(n, NormalizerAddDummyPrefix, true);
                WriteBool(n, NormalizerRemoveExtraWhitespaces, false);
                WriteBool(n, NormalizerEscapeWhitespaces, true);
            });
        });
    }

    static byte[] Message(Action<CodedOutputStream> writeFields)
    {
        using var buffer = new MemoryStream();
        using (var output = new CodedOutputStream(buffer, leaveOpen: true)) writeFields(output);
        return buffer.ToArray();
    }

    static void WriteMessage(CodedOutputStream output, int field, Action<CodedOutputStream> writeFields)
    {
        output.WriteTag(field, WireFormat.WireType.LengthDelimited);
        output.WriteBytes(ByteString.CopyFrom(Message(writeFields)));
    }

    static void WriteString(CodedOutputStream output, int field, string value)
    {
        output.WriteTag(field, WireFormat.WireType.LengthDelimited);
        output.WriteString(value);
    }

    static void WriteInt32(CodedOutputStream output, int field, int value)
    {
        output.WriteTag(field, WireFormat.WireType.Varint);
        output.WriteInt32(value);
    }

    static void WriteBool(CodedOutputStream output, int field, bool value)
    {
        output.WriteTag(field, WireFormat.WireType.Varint);
        output.WriteBool(value);
    }
}
