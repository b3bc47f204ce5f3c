# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'create_child_disk'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Creates a differencing child of a read-only parent. A parent that is writable is refused: writing
    # to a parent would corrupt every child made from it.
    $Path = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-os-7.vhdx'
    $ParentPath = 'D:\Imaging\images\win11-ltsc-2026C3-3f1c0c2a9d5e.vhdx'
    $Role = 'os'
    $parent = Get-Item -LiteralPath $ParentPath -ErrorAction SilentlyContinue
    if ($null -eq $parent) { throw "the parent image $ParentPath is not staged on this host" }
    if (-not $parent.IsReadOnly) { throw "refusing to use $ParentPath as a parent: it is not read-only (stage it with stage_artifact)" }
    if (Test-Path -LiteralPath $Path -PathType Leaf) {
        $existing = Get-VHD -Path $Path
        if ([string]$existing.ParentPath -ne $ParentPath) {
            throw "$Path already exists with parent '$($existing.ParentPath)', not $ParentPath; delete it first"
        }
    }
    else {
        Initialize-ImagingFolder -Path (Split-Path -Path $Path -Parent)
        New-VHD -Path $Path -ParentPath $ParentPath -Differencing | Out-Null
        $Result['changed'] = $true
    }
    $Result['path'] = $Path
    $Result['role'] = $Role
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
