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

$ImagingAction = 'create_disk'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Creates an empty, labelled NTFS data disk (GPT, one partition, no drive letter). The provider holds
    # the host's mount lock while this runs. A half-made disk from a failed run is removed, so a retry
    # starts clean; an existing disk is never reformatted.
    $Path = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-settings-7.vhdx'
    $SizeGb = [long]2
    $Label = 'Settings'
    $Role = 'settings'
    if (@('settings', 'var', 'data') -notcontains $Role) { throw "create_disk makes settings, var or data disks, not '$Role'" }
    if (Test-Path -LiteralPath $Path -PathType Leaf) {
        $Result['how'] = 'already exists'
    }
    else {
        Initialize-ImagingFolder -Path (Split-Path -Path $Path -Parent)
        # Sizes are written out in bytes (1 GiB = 1073741824): the parser the tests use lacks the 1GB suffix.
        New-VHD -Path $Path -SizeBytes ($SizeGb * 1073741824) -Dynamic | Out-Null
        $Result['changed'] = $true
        $complete = $false
        try {
            $vhd = Mount-VHD -Path $Path -NoDriveLetter -PassThru
            try {
                Initialize-Disk -Number $vhd.DiskNumber -PartitionStyle GPT
                $partition = New-Partition -DiskNumber $vhd.DiskNumber -UseMaximumSize -GptType '{ebd0a0a2-b9e5-4433-87c0-68b6b72699c7}'
                Format-Volume -Partition $partition -FileSystem NTFS -NewFileSystemLabel $Label -Confirm:$false | Out-Null
                $complete = $true
            }
            finally {
                Dismount-VHD -Path $Path
            }
        }
        finally {
            if (-not $complete) { Remove-Item -LiteralPath $Path -Force -ErrorAction SilentlyContinue }
        }
        $Result['how'] = 'created'
    }
    $Result['path'] = $Path
    $Result['label'] = $Label
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
