using System.Text.Json.Nodes;
using CombaDistill.IO;
using CombaDistill.Modeling.Comba;

namespace CombaDistill.Tests.Modeling;

public class CombaConfigTests
{
    [Fact]
    public void Json_round_trip_keeps_every_option_and_adds_only_comba_fields()
    {
        var config = new CombaConfig
        {
            Rotary = "teacher", ShortConv = 0, OutputNorm = true, ChunkSize = 128, Scale = 0.125, InitialD = -0.3, InitialLambda = 0.9, NormEps = 1e-5,
            FeatureMap = "taylor", NormalizeReadout = true, ReadoutEps = 0.25,
        };
        var existing = new JsonObject { ["model_type"] = "llama", ["hidden_size"] = 64 };
        var written = config.WriteTo(existing);
        Assert.Same(existing, written);
        Assert.Equal(2 + 11, written.Count);
        Assert.All(written.Select(p => p.Key).Where(k => k is not ("model_type" or "hidden_size")), k => Assert.StartsWith("comba_", k));
        Assert.Equal("teacher", (string?)written["comba_rotary"]);
        Assert.Equal(128, (int?)written["comba_chunk_size"]);
        Assert.Equal("taylor", (string?)written["comba_feature_map"]);
        Assert.True((bool?)written["comba_normalize_readout"]);

        var text = written.ToJsonString();
        var back = CombaConfig.FromJson(JsonNode.Parse(text)!.AsObject(), "config.json");
        Assert.Equal(config, back);
    }

    [Fact]
    public void Missing_fields_take_the_defaults()
    {
        var defaults = new CombaConfig();
        Assert.Equal(defaults, CombaConfig.FromJson(new JsonObject { ["model_type"] = "llama" }, "config.json"));
        Assert.Equal(("none", 4, false, 64, 1.0), (defaults.Rotary, defaults.ShortConv, defaults.OutputNorm, defaults.ChunkSize, defaults.Scale));
        Assert.Equal(("identity", false), (defaults.FeatureMap, defaults.NormalizeReadout));
        Assert.Equal((8, 8), (defaults.KeyDim(8), defaults.ValueDim(8)));
    }

    [Theory]
    [InlineData("comba_rotary", "\"yarn\"", "'comba_rotary' is 'yarn'")]
    [InlineData("comba_rotary", "3", "'comba_rotary' must be a string")]
    [InlineData("comba_short_conv", "3", "'comba_short_conv' is 3")]
    [InlineData("comba_short_conv", "4.5", "'comba_short_conv' must be an integer")]
    [InlineData("comba_chunk_size", "48", "'comba_chunk_size' is 48")]
    [InlineData("comba_scale", "0", "'comba_scale' is 0")]
    [InlineData("comba_scale", "\"big\"", "'comba_scale' must be a number")]
    [InlineData("comba_output_norm", "1", "'comba_output_norm' must be true or false")]
    [InlineData("comba_initial_lambda", "1", "'comba_initial_lambda' is 1")]
    [InlineData("comba_feature_map", "\"elu\"", "'comba_feature_map' is 'elu'; expected one of identity, taylor")]
    [InlineData("comba_normalize_readout", "\"yes\"", "'comba_normalize_readout' must be true or false")]
    [InlineData("comba_readout_eps", "0", "'comba_readout_eps' is 0")]
    public void Bad_fields_name_the_file_and_the_field(string field, string json, string expected)
    {
        var j = JsonNode.Parse($"{{\"{field}\": {json}}}")!.AsObject();
        var e = Assert.Throws<InvalidInputException>(() => CombaConfig.FromJson(j, "/models/student/config.json"));
        Assert.StartsWith("/models/student/config.json: ", e.Message);
        Assert.Contains(expected, e.Message);
    }
}
